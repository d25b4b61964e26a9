//! §1: password → `master` → `kek` and `auth`.

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;

pub const SALT_LEN: usize = 16;
const INFO_KEK: &[u8] = b"kiroku/v1/kek";
const INFO_AUTH: &[u8] = b"kiroku/v1/auth";

/// Argon2id cost parameters as stored per user and offered at prelogin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfParams {
    /// The default for new users; operators may raise it.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 65536,
        t: 3,
        p: 4,
    };
    /// Below this neither side derives or stores anything (downgrade guard).
    pub const FLOOR: KdfParams = KdfParams {
        m_kib: 19456,
        t: 2,
        p: 1,
    };
    /// Above this a browser tab would run out of memory or patience; a
    /// server offering more is as suspect as one offering less.
    pub const CEILING: KdfParams = KdfParams {
        m_kib: 4 * 1024 * 1024,
        t: 64,
        p: 64,
    };

    /// Accepts parameters at or above the floor (every field) and within the
    /// ceiling.
    pub fn check(&self) -> Result<(), CryptoError> {
        let floor = Self::FLOOR;
        if self.m_kib < floor.m_kib || self.t < floor.t || self.p < floor.p {
            return Err(CryptoError::ParamsBelowFloor);
        }
        let ceil = Self::CEILING;
        if self.m_kib > ceil.m_kib || self.t > ceil.t || self.p > ceil.p {
            return Err(CryptoError::ParamsOutOfRange);
        }
        // Argon2 needs at least 8 KiB of memory per lane.
        if self.m_kib < 8 * self.p {
            return Err(CryptoError::ParamsOutOfRange);
        }
        Ok(())
    }

    /// True when every field is at least the other's: used to decide
    /// whether a stored set must be upgraded to the operator's default.
    pub fn at_least(&self, other: &KdfParams) -> bool {
        self.m_kib >= other.m_kib && self.t >= other.t && self.p >= other.p
    }
}

/// A 32-byte secret that wipes itself and never prints.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Key32(pub [u8; 32]);

impl Key32 {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key32(…)")
    }
}

/// The three values derived from a password. `master` and `kek` never
/// leave the browser; `auth` is what the browser sends to log in.
#[derive(Debug)]
pub struct Derived {
    pub master: Key32,
    pub kek: Key32,
    pub auth: Key32,
}

/// Runs Argon2id over the NFC-normalised password, then HKDF-SHA256.
pub fn derive(password: &str, salt: &[u8], params: KdfParams) -> Result<Derived, CryptoError> {
    params.check()?;
    let salt: &[u8; SALT_LEN] = salt.try_into().map_err(|_| CryptoError::BadSalt)?;
    let normalised: Zeroizing<String> = Zeroizing::new(password.nfc().collect());
    let argon_params = Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|_| CryptoError::ParamsOutOfRange)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
    let mut master = Key32([0u8; 32]);
    argon
        .hash_password_into(normalised.as_bytes(), salt, &mut master.0)
        .map_err(|_| CryptoError::ParamsOutOfRange)?;
    let (kek, auth) = expand(&master);
    Ok(Derived { master, kek, auth })
}

/// HKDF-SHA256 without salt from `master` to (`kek`, `auth`).
pub fn expand(master: &Key32) -> (Key32, Key32) {
    let hk = Hkdf::<Sha256>::new(None, master.as_bytes());
    let mut kek = Key32([0u8; 32]);
    let mut auth = Key32([0u8; 32]);
    hk.expand(INFO_KEK, &mut kek.0)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    hk.expand(INFO_AUTH, &mut auth.0)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    (kek, auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_is_checked_field_by_field() {
        assert!(KdfParams::FLOOR.check().is_ok());
        assert!(KdfParams::DEFAULT.check().is_ok());
        for weak in [
            KdfParams {
                m_kib: 19455,
                t: 2,
                p: 1,
            },
            KdfParams {
                m_kib: 65536,
                t: 1,
                p: 4,
            },
            KdfParams {
                m_kib: 65536,
                t: 3,
                p: 0,
            },
        ] {
            assert_eq!(weak.check(), Err(CryptoError::ParamsBelowFloor));
        }
        let huge = KdfParams {
            m_kib: u32::MAX,
            t: 3,
            p: 4,
        };
        assert_eq!(huge.check(), Err(CryptoError::ParamsOutOfRange));
    }

    #[test]
    fn salt_must_be_sixteen_bytes() {
        let err = derive("pw", &[0u8; 15], KdfParams::FLOOR).unwrap_err();
        assert_eq!(err, CryptoError::BadSalt);
    }

    #[test]
    fn debug_output_hides_key_bytes() {
        let k = Key32([7u8; 32]);
        assert_eq!(format!("{k:?}"), "Key32(…)");
    }
}
