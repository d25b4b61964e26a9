//! Known-answer vectors from an independent implementation (Python's
//! `cryptography`), run on the host and, through wasm-bindgen-test, in
//! headless Chromium.

use kiroku_crypto::kdf::{self, KdfParams, Key32};
use kiroku_crypto::token::{self, KeyRing, Policy, TokenError};
use kiroku_crypto::{CryptoError, b64, envelope, userkey};
use serde_json::Value;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const VECTORS: &str = include_str!("data/crypto-vectors.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).expect("vector file is JSON")
}

fn bytes(v: &Value) -> Vec<u8> {
    b64::decode(v.as_str().expect("string")).expect("base64url")
}

fn key(v: &Value) -> Key32 {
    Key32(bytes(v).try_into().expect("32 bytes"))
}

fn params(v: &Value) -> KdfParams {
    let n = |k: &str| v[k].as_u64().expect("number") as u32;
    KdfParams {
        m_kib: n("m_kib"),
        t: n("t"),
        p: n("p"),
    }
}

fn must_fail(what: &str) -> Value {
    vectors()["must_fail"]
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["what"].as_str().unwrap().contains(what))
        .cloned()
        .unwrap_or_else(|| panic!("no must_fail entry about {what}"))
}

fn private_key() -> rsa::PrivateKey {
    let v = vectors();
    userkey::parse_private_key(&bytes(&v["user_key"]["private_key_pkcs8"])).unwrap()
}

#[test]
fn kdf_vectors_match() {
    for case in vectors()["kdf"].as_array().unwrap() {
        let password = case["password"].as_str().unwrap();
        let derived = kdf::derive(password, &bytes(&case["salt"]), params(case)).unwrap();
        assert_eq!(
            derived.master,
            key(&case["master"]),
            "master for {password}"
        );
        assert_eq!(derived.kek, key(&case["kek"]), "kek for {password}");
        assert_eq!(derived.auth, key(&case["auth"]), "auth for {password}");
    }
}

#[test]
fn kdf_refuses_parameters_below_the_floor() {
    let weak = params(&must_fail("below the floor"));
    assert_eq!(
        kdf::derive("x", &[0u8; 16], weak).unwrap_err(),
        CryptoError::ParamsBelowFloor
    );
}

#[test]
fn user_key_wrap_matches_and_unwraps() {
    let v = vectors();
    let uk = &v["user_key"];
    let kek = key(&v["kdf"][0]["kek"]);
    let user_id = uk["user_id"].as_str().unwrap();
    let pkcs8 = bytes(&uk["private_key_pkcs8"]);
    let nonce: [u8; 12] = bytes(&uk["nonce"]).try_into().unwrap();
    let wrapped = userkey::wrap_with_nonce(&kek, user_id, &pkcs8, &nonce).unwrap();
    assert_eq!(wrapped, bytes(&uk["private_key_enc"]));
    assert_eq!(
        userkey::unwrap(&kek, user_id, &wrapped).unwrap().as_slice(),
        pkcs8.as_slice()
    );
    // The public key in the vectors is the one the private key implies.
    userkey::parse_public_key(&bytes(&uk["public_key_spki"])).unwrap();
}

#[test]
fn user_key_bound_to_its_owner() {
    let v = vectors();
    let kek = key(&v["kdf"][0]["kek"]);
    let other = must_fail("different user_id");
    let wrapped = bytes(&v["user_key"]["private_key_enc"]);
    let got = userkey::unwrap(&kek, other["user_id"].as_str().unwrap(), &wrapped);
    assert_eq!(got.unwrap_err(), CryptoError::Verification);
}

#[test]
fn user_key_refuses_wrong_kek_and_any_flipped_bit() {
    let v = vectors();
    let uk = &v["user_key"];
    let user_id = uk["user_id"].as_str().unwrap();
    let wrapped = bytes(&uk["private_key_enc"]);
    let wrong = key(&v["kdf"][1]["kek"]);
    assert!(userkey::unwrap(&wrong, user_id, &wrapped).is_err());
    let kek = key(&v["kdf"][0]["kek"]);
    for i in [0, 11, 12, wrapped.len() / 2, wrapped.len() - 1] {
        let mut bad = wrapped.clone();
        bad[i] ^= 1;
        assert!(
            userkey::unwrap(&kek, user_id, &bad).is_err(),
            "bit at byte {i}"
        );
    }
    assert!(userkey::unwrap(&kek, user_id, &wrapped[..20]).is_err());
}

#[test]
fn artifact_vector_seals_and_opens() {
    let v = vectors();
    let a = &v["artifact"];
    let id = a["artifact_id"].as_str().unwrap();
    let kind = a["kind"].as_str().unwrap();
    assert_eq!(
        envelope::aad(id, kind),
        a["aad"].as_str().unwrap().as_bytes()
    );
    let dek = key(&a["dek"]);
    let nonce: [u8; 12] = bytes(&a["nonce"]).try_into().unwrap();
    let plaintext = bytes(&a["plaintext"]);
    let object = envelope::seal_with(&dek, &nonce, id, kind, &plaintext).unwrap();
    assert_eq!(object, bytes(&a["object"]));
    let opened = envelope::open(&private_key(), id, kind, &bytes(&a["dek_enc"]), &object).unwrap();
    assert_eq!(opened.as_slice(), plaintext.as_slice());
}

#[test]
fn artifact_must_fail_entries_are_refused() {
    let v = vectors();
    let a = &v["artifact"];
    let id = a["artifact_id"].as_str().unwrap();
    let dek = key(&a["dek"]);
    for what in ["ciphertext bit flipped", "tag's last bit"] {
        let object = bytes(&must_fail(what)["object"]);
        let got = envelope::open_with(&dek, id, "md", &object);
        assert_eq!(got.unwrap_err(), CryptoError::Verification, "{what}");
    }
    let kind = must_fail("AAD mismatch")["kind"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = envelope::open_with(&dek, id, &kind, &bytes(&a["object"]));
    assert_eq!(got.unwrap_err(), CryptoError::Verification);
}

#[test]
fn artifact_tampering_anywhere_is_refused() {
    let v = vectors();
    let a = &v["artifact"];
    let id = a["artifact_id"].as_str().unwrap();
    let object = bytes(&a["object"]);
    let dek_enc = bytes(&a["dek_enc"]);
    let key = private_key();
    // magic, nonce, ciphertext, tag
    for i in [0, 4, 15, 16, object.len() - 1] {
        let mut bad = object.clone();
        bad[i] ^= 0x80;
        assert!(
            envelope::open(&key, id, "md", &dek_enc, &bad).is_err(),
            "object byte {i}"
        );
    }
    let mut bad_dek = dek_enc.clone();
    bad_dek[7] ^= 1;
    assert!(envelope::open(&key, id, "md", &bad_dek, &object).is_err());
    let other_id = "7c9e6679-7425-40de-944b-e07fc1f90ae8";
    assert!(envelope::open(&key, other_id, "md", &dek_enc, &object).is_err());
    assert!(envelope::open(&key, id, "md", &dek_enc, &object[..10]).is_err());
}

#[test]
fn seal_round_trips_with_fresh_keys() {
    let pair = userkey::generate().unwrap();
    let public = userkey::parse_public_key(&pair.public_spki).unwrap();
    let private = userkey::parse_private_key(&pair.private_pkcs8).unwrap();
    let sealed = envelope::seal(&public, "a1", "pdf", b"%PDF-1.7 hello").unwrap();
    assert_eq!(&sealed.object[..4], b"KRK1");
    assert_eq!(sealed.object.len(), 14 + envelope::OVERHEAD);
    let opened = envelope::open(&private, "a1", "pdf", &sealed.dek_enc, &sealed.object).unwrap();
    assert_eq!(opened.as_slice(), b"%PDF-1.7 hello");
    let again = envelope::seal(&public, "a1", "pdf", b"%PDF-1.7 hello").unwrap();
    assert_ne!(
        again.object, sealed.object,
        "nonce and key are fresh each time"
    );
}

#[test]
fn only_plain_kinds_enter_the_aad() {
    let dek = Key32([0u8; 32]);
    for kind in ["", "md|x", "PDF", "md/../x"] {
        assert!(
            envelope::seal_with(&dek, &[0u8; 12], "a", kind, b"x").is_err(),
            "{kind}"
        );
    }
}

fn ring_and_policy() -> (KeyRing, Policy, Value) {
    let v = vectors();
    let t = v["token"].clone();
    let mut ring = KeyRing::default();
    for (kid, secret) in t["ring"].as_object().unwrap() {
        ring.insert(kid, bytes(secret)).unwrap();
    }
    let policy = Policy {
        max_ttl: t["max_ttl"].as_i64().unwrap(),
        skew: t["skew"].as_i64().unwrap(),
    };
    (ring, policy, t)
}

#[test]
fn token_vector_is_accepted_for_its_path_only() {
    let (ring, policy, t) = ring_and_policy();
    let tok = t["token"].as_str().unwrap();
    let path = t["payload"]["path"].as_str().unwrap();
    let now = t["accept_at"].as_i64().unwrap();
    let (kid, claims) = token::verify(&ring, policy, tok, path, now).unwrap();
    assert_eq!(kid, "k1");
    assert_eq!(claims.filename, t["payload"]["filename"].as_str().unwrap());
    assert_eq!(claims.exp, t["payload"]["exp"].as_i64().unwrap());
    let later = t["reject_expired_at"].as_i64().unwrap();
    assert_eq!(
        token::verify(&ring, policy, tok, path, later),
        Err(TokenError::Expired)
    );
    let other = must_fail("different path")["path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        token::verify(&ring, policy, tok, &other, now),
        Err(TokenError::PathMismatch)
    );
}

#[test]
fn token_must_fail_entries_are_refused() {
    let (ring, policy, t) = ring_and_policy();
    let path = t["payload"]["path"].as_str().unwrap();
    let now = t["accept_at"].as_i64().unwrap();
    let altered = must_fail("payload altered")["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        token::verify(&ring, policy, &altered, path, now),
        Err(TokenError::BadMac)
    );
    let unknown = must_fail("unknown kid")["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        token::verify(&ring, policy, &unknown, path, now),
        Err(TokenError::UnknownKid)
    );
}

#[test]
fn token_with_flipped_mac_bit_or_removed_kid_is_refused() {
    let (mut ring, policy, t) = ring_and_policy();
    let tok = t["token"].as_str().unwrap();
    let path = t["payload"]["path"].as_str().unwrap();
    let now = t["accept_at"].as_i64().unwrap();
    let (head, mac) = tok.rsplit_once('.').unwrap();
    let mut mac = b64::decode(mac).unwrap();
    mac[31] ^= 1;
    let flipped = format!("{head}.{}", b64::encode(&mac));
    assert_eq!(
        token::verify(&ring, policy, &flipped, path, now),
        Err(TokenError::BadMac)
    );
    assert!(ring.remove("k1"));
    assert_eq!(
        token::verify(&ring, policy, tok, path, now),
        Err(TokenError::UnknownKid)
    );
}

#[test]
fn our_tokens_verify_with_the_vector_ring() {
    let (ring, policy, t) = ring_and_policy();
    let claims: token::Claims = serde_json::from_value(t["payload"].clone()).unwrap();
    let ours = ring.sign("k1", &claims).unwrap();
    let now = t["accept_at"].as_i64().unwrap();
    assert_eq!(
        token::verify(&ring, policy, &ours, &claims.path, now)
            .unwrap()
            .1,
        claims
    );
}
