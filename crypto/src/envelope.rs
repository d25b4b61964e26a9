//! §4: the artifact envelope, sealed by a worker and opened in the browser.
//!
//! Object layout: `"KRK1" || nonce(12) || AES-256-GCM(dek, nonce, plaintext, aad)`;
//! `dek_enc = RSA-OAEP-SHA256(public_key, dek)`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rsa::{PrivateKey, PublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::kdf::Key32;

pub const MAGIC: &[u8; 4] = b"KRK1";
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Written beside each artifact in the database.
pub const ALGORITHM: &str = "A256GCM+RSA-OAEP-256";
/// Bytes the envelope adds to the plaintext.
pub const OVERHEAD: usize = MAGIC.len() + NONCE_LEN + TAG_LEN;

/// Artifact kinds are short lowercase words; anything else could smuggle a
/// separator into the AAD.
pub fn check_kind(kind: &str) -> Result<(), CryptoError> {
    let ok = !kind.is_empty()
        && kind.len() <= 16
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(CryptoError::Malformed("artifact kind"))
    }
}

pub fn aad(artifact_id: &str, kind: &str) -> Vec<u8> {
    format!("kiroku/v1/artifact|{artifact_id}|{kind}").into_bytes()
}

/// What a worker stores: the object bytes and the wrapped data key.
pub struct Sealed {
    pub object: Vec<u8>,
    pub dek_enc: Vec<u8>,
}

/// Seals `plaintext` for the holder of `public_key` with a fresh key and nonce.
pub fn seal(
    public_key: &PublicKey,
    artifact_id: &str,
    kind: &str,
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    let dek = Key32(crate::random_array::<32>()?);
    let nonce = crate::random_array::<NONCE_LEN>()?;
    let object = seal_with(&dek, &nonce, artifact_id, kind, plaintext)?;
    let dek_enc = public_key
        .oaep_encrypt::<Sha256>(dek.as_bytes())
        .map_err(|_| CryptoError::Key("RSA-OAEP encrypt"))?;
    Ok(Sealed { object, dek_enc })
}

/// The symmetric half of [`seal`], with caller-chosen key and nonce (for
/// known-answer tests; production always uses fresh random values).
pub fn seal_with(
    dek: &Key32,
    nonce: &[u8; NONCE_LEN],
    artifact_id: &str,
    kind: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    check_kind(kind)?;
    let cipher = Aes256Gcm::new(dek.as_bytes().into());
    let aad = aad(artifact_id, kind);
    let ct = cipher
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Malformed("plaintext too long"))?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Recovers the data key with the owner's private key.
pub fn unwrap_dek(private_key: &PrivateKey, dek_enc: &[u8]) -> Result<Key32, CryptoError> {
    let dek = Zeroizing::new(
        private_key
            .oaep_decrypt::<Sha256>(dek_enc)
            .map_err(|_| CryptoError::Verification)?,
    );
    let bytes: [u8; 32] = dek
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Verification)?;
    Ok(Key32(bytes))
}

/// Checks the magic and opens the object with `dek` and the exact AAD.
pub fn open_with(
    dek: &Key32,
    artifact_id: &str,
    kind: &str,
    object: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    check_kind(kind)?;
    if object.len() < OVERHEAD || &object[..MAGIC.len()] != MAGIC {
        return Err(CryptoError::Verification);
    }
    let nonce: [u8; NONCE_LEN] = object[MAGIC.len()..MAGIC.len() + NONCE_LEN]
        .try_into()
        .expect("length checked above");
    let cipher = Aes256Gcm::new(dek.as_bytes().into());
    let aad = aad(artifact_id, kind);
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &object[MAGIC.len() + NONCE_LEN..],
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Verification)
}

/// Opens an artifact end to end, as the browser does.
pub fn open(
    private_key: &PrivateKey,
    artifact_id: &str,
    kind: &str,
    dek_enc: &[u8],
    object: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let dek = unwrap_dek(private_key, dek_enc)?;
    open_with(&dek, artifact_id, kind, object)
}
