//! §2: the user's RSA key pair and the wrapping of its private half.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::kdf::Key32;

pub const NONCE_LEN: usize = 12;
pub const RSA_BITS: usize = 2048;

/// The AAD that binds a wrapped private key to its owner.
pub fn wrap_aad(user_id: &str) -> Vec<u8> {
    let mut aad = b"kiroku/v1/user-key|".to_vec();
    aad.extend_from_slice(user_id.as_bytes());
    aad
}

/// A freshly made key pair as DER: SPKI public, PKCS#8 private.
pub struct KeyPair {
    pub public_spki: Vec<u8>,
    pub private_pkcs8: Zeroizing<Vec<u8>>,
}

/// Makes an RSA-2048 key pair with exponent 65537.
pub fn generate() -> Result<KeyPair, CryptoError> {
    let mut rng = getrandom::SysRng;
    let private = PrivateKey::new(&mut rng, RSA_BITS).map_err(|_| CryptoError::Random)?;
    let public_spki = private
        .to_public_key()
        .to_public_key_der()
        .map_err(|_| CryptoError::Key("encode public key"))?
        .into_vec();
    let private_pkcs8 = Zeroizing::new(
        private
            .to_pkcs8_der()
            .map_err(|_| CryptoError::Key("encode private key"))?
            .as_bytes()
            .to_vec(),
    );
    Ok(KeyPair {
        public_spki,
        private_pkcs8,
    })
}

/// Checks that `spki` is an RSA-2048 public key with exponent 65537, the
/// only shape the server accepts at key setup.
pub fn parse_public_key(spki: &[u8]) -> Result<PublicKey, CryptoError> {
    use rsa::traits::PublicKeyParts;
    let key = PublicKey::from_public_key_der(spki).map_err(|_| CryptoError::Key("public key"))?;
    if key.size() != RSA_BITS / 8 {
        return Err(CryptoError::Key("public key must be RSA-2048"));
    }
    let e = key.e();
    let e_bytes = e.to_be_bytes();
    let trimmed: Vec<u8> = e_bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if trimmed != [0x01, 0x00, 0x01] {
        return Err(CryptoError::Key("public exponent must be 65537"));
    }
    Ok(key)
}

pub fn parse_private_key(pkcs8: &[u8]) -> Result<PrivateKey, CryptoError> {
    PrivateKey::from_pkcs8_der(pkcs8).map_err(|_| CryptoError::Key("private key"))
}

/// `nonce || AES-256-GCM(kek, nonce, pkcs8, aad)` with a fresh nonce.
pub fn wrap(kek: &Key32, user_id: &str, pkcs8: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = crate::random_array::<NONCE_LEN>()?;
    wrap_with_nonce(kek, user_id, pkcs8, &nonce)
}

/// Deterministic form of [`wrap`], for known-answer tests.
pub fn wrap_with_nonce(
    kek: &Key32,
    user_id: &str,
    pkcs8: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new(kek.as_bytes().into());
    let aad = wrap_aad(user_id);
    let ct = cipher
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: pkcs8,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Key("wrap"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a wrapped private key; any tampering, a wrong password or a
/// wrong user gives [`CryptoError::Verification`].
pub fn unwrap(
    kek: &Key32,
    user_id: &str,
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if wrapped.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Verification);
    }
    let (nonce, ct) = wrapped.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new(kek.as_bytes().into());
    let aad = wrap_aad(user_id);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Verification)
}
