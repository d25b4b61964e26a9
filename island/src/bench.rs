//! Measurement hook for `bench/argon2.mjs` (`just bench-argon2`), not part
//! of any product flow.
//!
//! It exposes the island's own Argon2id (through [`kdf::derive`], exactly
//! as key setup and sign-in run it) to a benchmark page, so that the wasm
//! the product ships can be timed against other implementations and its
//! output compared with theirs. No page of the product calls it.

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
