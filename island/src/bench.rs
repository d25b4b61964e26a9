//! Measurement hooks for `bench/argon2.mjs` and `bench/decrypt.mjs`
//! (`just bench`), not part of any product flow.
//!
//! They expose the island's own Argon2id (through [`kdf::derive`], exactly
//! as key setup and sign-in run it) and its artifact opening (exactly as
//! the reader runs it) to benchmark pages, so that the wasm the product
//! ships can be timed against other implementations and its output
//! compared with theirs. No page of the product calls them.

use kiroku_crypto::kdf::{self, KdfParams};
use wasm_bindgen::prelude::*;

/// Argon2id v0x13 over the NFC-normalised `password` with a 16-byte `salt`
/// and the given cost, returning `master` (32 bytes) as lowercase hex.
///
/// Measurement hook only: it hands a key to JavaScript in the clear, which
/// no product flow ever does. Parameters below the floor are refused as in
/// [`kdf::derive`].
#[wasm_bindgen]
pub fn argon2id_hex(
    password: &str,
    salt: &[u8],
    m_kib: u32,
    t: u32,
    p: u32,
) -> Result<String, JsValue> {
    let params = KdfParams { m_kib, t, p };
    let derived =
        kdf::derive(password, salt, params).map_err(|e| JsValue::from_str(&e.to_string()))?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in derived.master.as_bytes() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
    Ok(out)
}

/// Imports a PKCS#8 private key as the key store holds one (non-extractable
/// RSA-OAEP), for `bench/decrypt.mjs`.
#[wasm_bindgen]
pub async fn bench_import_private(pkcs8: Vec<u8>) -> Result<web_sys::CryptoKey, JsValue> {
    crate::webcrypto::import_private(&pkcs8).await
}

/// Opens a sealed artifact exactly as the reader does after its download
/// ([`crate::reader::open_sealed`]): the measured path of the decrypt
/// benchmark. Resolves to the plaintext `ArrayBuffer`.
#[wasm_bindgen]
pub async fn bench_open(
    key: web_sys::CryptoKey,
    artifact_id: String,
    kind: String,
    dek_enc: Vec<u8>,
    object: js_sys::Uint8Array,
) -> Result<js_sys::ArrayBuffer, JsValue> {
    crate::reader::open_sealed(&key, &artifact_id, &kind, &dek_enc, &object)
        .await
        .map_err(|e| JsValue::from_str(&format!("{e:?}")))
}
