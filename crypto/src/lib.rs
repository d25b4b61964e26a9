//! Kiroku's crypto contract, version 1 (`docs/crypto.md`).
//!
//! Every byte layout here is shared by the browser island (wasm32), the
//! workers and the export service, and pinned by known-answer vectors made
//! with an independent implementation. Nothing in this crate depends on any
//! other Kiroku crate.

pub mod b64;
pub mod envelope;
pub mod kdf;
pub mod token;
pub mod userkey;

use thiserror::Error;

/// Why an operation of this crate failed. The variants are deliberately
/// coarse: callers show "could not be verified" and log the variant name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("KDF parameters are below the floor (m_kib ≥ 19456, t ≥ 2, p ≥ 1)")]
    ParamsBelowFloor,
    #[error("KDF parameters are out of range")]
    ParamsOutOfRange,
    #[error("salt must be 16 bytes")]
    BadSalt,
    #[error("the data could not be verified")]
    Verification,
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    #[error("key error: {0}")]
    Key(&'static str),
    #[error("the system random number generator failed")]
    Random,
}

/// Fills `buf` from the operating system's generator (the browser's
/// `crypto.getRandomValues` on wasm32).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// A fixed-size array of random bytes.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    random_bytes(&mut out)?;
    Ok(out)
}
