//! §5: short-lived, path-bound export tokens (app → export service).
//!
//! `"v1." || kid || "." || b64url(payload) || "." || b64url(HMAC-SHA256(secret[kid], head))`
//! where `head` is everything before the last dot.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::b64;

pub const FINAL_PREFIX: &str = "final/v1/";
pub const MIN_SECRET_LEN: usize = 32;
/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a token was refused. Each has its own stable code; none says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token version")]
    Version,
    #[error("unknown key id")]
    UnknownKid,
    #[error("bad signature")]
    BadMac,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("token does not match the requested object")]
    PathMismatch,
    #[error("object outside the export area")]
    OutsideArea,
}

impl TokenError {
    /// A short, stable code for responses and audit lines.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Version => "token_version",
            TokenError::UnknownKid => "token_unknown_kid",
            TokenError::BadMac => "token_bad_mac",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::LifetimeTooLong => "token_lifetime",
            TokenError::PathMismatch => "token_path_mismatch",
            TokenError::OutsideArea => "token_outside_area",
        }
    }
}

/// What a token grants: one object, for a short time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub path: String,
    pub project_id: String,
    pub artifact_id: String,
    pub content_type: String,
    pub filename: String,
    pub iat: i64,
    pub exp: i64,
}

/// Key ids are 1–32 characters of `A-Z a-z 0-9 _ -`.
pub fn valid_kid(kid: &str) -> bool {
    (1..=32).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True for a plain object key below `final/v1/`: no empty, `.` or `..`
/// segment, no backslash, percent sign or control character.
pub fn is_final_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(FINAL_PREFIX) else {
        return false;
    };
    !rest.is_empty()
        && path.len() <= 512
        && rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

/// `kid → secret`, from configuration.
#[derive(Default, Clone)]
pub struct KeyRing {
    keys: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.kids())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    #[error("key id {0:?} must be 1-32 characters of A-Z a-z 0-9 _ -")]
    BadKid(String),
    #[error("secret for key id {0:?} must be at least 32 bytes of base64url")]
    BadSecret(String),
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
    #[error("expected a comma-separated list of kid:secret")]
    Syntax,
}

impl KeyRing {
    pub fn insert(&mut self, kid: &str, secret: Vec<u8>) -> Result<(), KeyRingError> {
        if !valid_kid(kid) {
            return Err(KeyRingError::BadKid(kid.to_owned()));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyRingError::BadSecret(kid.to_owned()));
        }
        if self.keys.contains_key(kid) {
            return Err(KeyRingError::Duplicate(kid.to_owned()));
        }
        self.keys.insert(kid.to_owned(), Zeroizing::new(secret));
        Ok(())
    }

    /// Parses `kid:b64url-secret[,kid:b64url-secret…]`.
    pub fn parse(spec: &str) -> Result<KeyRing, KeyRingError> {
        let mut ring = KeyRing::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (kid, secret) = entry.split_once(':').ok_or(KeyRingError::Syntax)?;
            let secret = b64::decode(secret).map_err(|_| KeyRingError::BadSecret(kid.into()))?;
            ring.insert(kid, secret)?;
        }
        if ring.keys.is_empty() {
            return Err(KeyRingError::Syntax);
        }
        Ok(ring)
    }

    /// Renders the ring in the form [`KeyRing::parse`] reads.
    pub fn to_spec(&self) -> Zeroizing<String> {
        let parts: Vec<String> = self
            .keys
            .iter()
            .map(|(k, s)| format!("{k}:{}", b64::encode(s.as_slice())))
            .collect();
        Zeroizing::new(parts.join(","))
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).collect()
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn remove(&mut self, kid: &str) -> bool {
        self.keys.remove(kid).is_some()
    }

    fn mac(&self, kid: &str, head: &str) -> Option<[u8; 32]> {
        let secret = self.keys.get(kid)?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .expect("HMAC accepts keys of any length");
        mac.update(head.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    /// Signs `claims` with `kid`. The caller keeps `exp − iat` short.
    pub fn sign(&self, kid: &str, claims: &Claims) -> Result<String, TokenError> {
        if !is_final_path(&claims.path) {
            return Err(TokenError::OutsideArea);
        }
        let payload = serde_json::to_vec(claims).map_err(|_| TokenError::Malformed)?;
        let head = format!("v1.{kid}.{}", b64::encode(payload));
        let mac = self.mac(kid, &head).ok_or(TokenError::UnknownKid)?;
        Ok(format!("{head}.{}", b64::encode(mac)))
    }
}

/// The export service's acceptance rules.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Largest accepted `exp − iat`, seconds.
    pub max_ttl: i64,
    /// Tolerated clock difference, seconds.
    pub skew: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_ttl: 300,
            skew: 30,
        }
    }
}

/// Checks `token` for the object at `requested_path` at time `now`.
/// The MAC is checked before the payload is parsed, in constant time.
pub fn verify(
    ring: &KeyRing,
    policy: Policy,
    token: &str,
    requested_path: &str,
    now: i64,
) -> Result<(String, Claims), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (head, mac_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mut parts = head.splitn(3, '.');
    let version = parts.next().ok_or(TokenError::Malformed)?;
    let kid = parts.next().ok_or(TokenError::Malformed)?;
    let payload_b64 = parts.next().ok_or(TokenError::Malformed)?;
    if version != "v1" {
        return Err(TokenError::Version);
    }
    if !valid_kid(kid) || payload_b64.contains('.') {
        return Err(TokenError::Malformed);
    }
    let given: [u8; 32] = b64::decode_array(mac_b64).map_err(|_| TokenError::Malformed)?;
    let expected = ring.mac(kid, head).ok_or(TokenError::UnknownKid)?;
    if !bool::from(expected.ct_eq(&given)) {
        return Err(TokenError::BadMac);
    }
    let payload = b64::decode(payload_b64).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.exp - claims.iat > policy.max_ttl || claims.exp < claims.iat {
        return Err(TokenError::LifetimeTooLong);
    }
    if now > claims.exp + policy.skew {
        return Err(TokenError::Expired);
    }
    if now + policy.skew < claims.iat {
        return Err(TokenError::NotYetValid);
    }
    if !is_final_path(&claims.path) {
        return Err(TokenError::OutsideArea);
    }
    if claims.path != requested_path {
        return Err(TokenError::PathMismatch);
    }
    Ok((kid.to_owned(), claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        let mut r = KeyRing::default();
        r.insert("k1", vec![1u8; 32]).unwrap();
        r
    }

    fn claims(path: &str) -> Claims {
        Claims {
            path: path.into(),
            project_id: "p".into(),
            artifact_id: "a".into(),
            content_type: "application/pdf".into(),
            filename: "guion.pdf".into(),
            iat: 1000,
            exp: 1100,
        }
    }

    #[test]
    fn final_paths_are_plain() {
        assert!(is_final_path("final/v1/u/p/a"));
        for bad in [
            "final/v1/",
            "final/v1/../work/x",
            "final/v1/a//b",
            "final/v1/a/./b",
            "final/v1/%2e%2e/x",
            "final/v10/x",
            "work/x",
            "/final/v1/x",
            "final/v1/a\\b",
        ] {
            assert!(!is_final_path(bad), "{bad}");
        }
    }

    #[test]
    fn signed_token_verifies_only_for_its_path_and_time() {
        let r = ring();
        let t = r.sign("k1", &claims("final/v1/u/p/a")).unwrap();
        let p = Policy::default();
        assert!(verify(&r, p, &t, "final/v1/u/p/a", 1050).is_ok());
        assert_eq!(
            verify(&r, p, &t, "final/v1/u/p/b", 1050),
            Err(TokenError::PathMismatch)
        );
        assert_eq!(
            verify(&r, p, &t, "final/v1/u/p/a", 1131),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&r, p, &t, "final/v1/u/p/a", 900),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn over_long_lifetime_is_refused() {
        let r = ring();
        let mut c = claims("final/v1/u/p/a");
        c.exp = c.iat + 301;
        let t = r.sign("k1", &c).unwrap();
        let got = verify(&r, Policy::default(), &t, "final/v1/u/p/a", 1050);
        assert_eq!(got, Err(TokenError::LifetimeTooLong));
    }

    #[test]
    fn signing_outside_the_final_area_is_refused() {
        assert_eq!(
            ring().sign("k1", &claims("work/x")),
            Err(TokenError::OutsideArea)
        );
    }

    #[test]
    fn ring_spec_round_trips_and_validates() {
        let r = KeyRing::parse(&format!(
            "a-1:{},b_2:{}",
            b64::encode([3u8; 32]),
            b64::encode([4u8; 40])
        ))
        .unwrap();
        assert_eq!(r.kids(), vec!["a-1", "b_2"]);
        assert_eq!(KeyRing::parse(&r.to_spec()).unwrap().kids(), r.kids());
        assert!(matches!(
            KeyRing::parse("k:AAAA"),
            Err(KeyRingError::BadSecret(_))
        ));
        assert!(matches!(
            KeyRing::parse(&format!("bad kid:{}", b64::encode([0u8; 32]))),
            Err(KeyRingError::BadKid(_))
        ));
        assert!(matches!(KeyRing::parse(""), Err(KeyRingError::Syntax)));
        let dup = format!("k:{0},k:{0}", b64::encode([0u8; 32]));
        assert!(matches!(
            KeyRing::parse(&dup),
            Err(KeyRingError::Duplicate(_))
        ));
    }

    #[test]
    fn garbage_tokens_are_malformed_not_panics() {
        let r = ring();
        for t in [
            "",
            ".",
            "v1",
            "v1.k1",
            "v1.k1.x",
            "v1.k1..",
            "v1.k1.e30.!!",
            "v1.k 1.e30.AA",
        ] {
            assert!(
                verify(&r, Policy::default(), t, "final/v1/x", 0).is_err(),
                "{t}"
            );
        }
        assert_eq!(
            verify(&r, Policy::default(), "v2.k1.e30.AA", "final/v1/x", 0),
            Err(TokenError::Version)
        );
        let long = "v1.k1.".to_string() + &"A".repeat(MAX_TOKEN_LEN);
        assert_eq!(
            verify(&r, Policy::default(), &long, "x", 0),
            Err(TokenError::Malformed)
        );
    }
}
