//! The real `kiroku-export` binary against the real SeaweedFS: tokens
//! (CRYPTO.md §5), raw-path binding, CORS, ranges, streaming memory and
//! rate limiting. Every test starts its own service instance and seeds its
//! own objects, which are deleted when the test ends (even on failure).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kiroku_crypto::b64;
use kiroku_crypto::token::{Claims, KeyRing};
use kiroku_runtime::Env;
use kiroku_storage::Role;
use kiroku_tests::{Service, env, free_port, s3_store, wait_ready};
// HMAC-SHA256 by hand (for tokens `KeyRing::sign` refuses to make) needs
// SHA-256; tests/Cargo.toml has no sha2 or hmac, but rsa re-exports sha2.
use rsa::sha2::{Digest, Sha256};
use serde_json::json;

/// `KIROKU_PUBLIC_URL` given to every instance; CORS allows its origin only.
const PUBLIC_URL: &str = "https://studio.kiroku.test:8443/app/";
const APP_ORIGIN: &str = "https://studio.kiroku.test:8443";
const KID: &str = "k1";
const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------- service

struct Export {
    svc: Service,
    port: u16,
    base: String,
}

impl Export {
    /// Starts `kiroku-export` on S3 with the configured ring plus `extra`
    /// overrides, and waits until it is ready.
    async fn start(extra: &[(&str, String)]) -> Export {
        let port = free_port();
        let mut o: Vec<(&str, String)> = vec![
            ("KIROKU_STORAGE", "s3".into()),
            ("KIROKU_EXPORT_LISTEN", format!("127.0.0.1:{port}")),
            ("KIROKU_LOG", "warn".into()),
            ("KIROKU_PUBLIC_URL", PUBLIC_URL.into()),
        ];
        o.extend(extra.iter().cloned());
        let svc = Service::start("kiroku-export", &[], &o);
        let base = format!("http://127.0.0.1:{port}");
        let body = wait_ready(&format!("{base}/readyz"), 30)
            .await
            .unwrap_or_else(|e| panic!("export service not ready: {e}"));
        assert!(body.contains("storage: ok"), "{body}");
        Export { svc, port, base }
    }

    fn url(&self, key: &str) -> String {
        format!("{}/objects/{key}", self.base)
    }

    fn pid(&self) -> u32 {
        self.svc.child.id()
    }
}

// ---------------------------------------------------------------- objects

/// Objects seeded with the worker's credential; deleted on drop, with a
/// fresh client on its own thread so that a panicking test cleans up too.
struct Seeded {
    keys: Vec<String>,
}

impl Seeded {
    fn new() -> Seeded {
        Seeded { keys: Vec::new() }
    }

    /// A fresh key `<area><uuid>/<uuid>/<uuid>`.
    fn key(area: &str) -> String {
        let id = || uuid::Uuid::new_v4().to_string();
        format!("{area}{}/{}/{}", id(), id(), id())
    }

    async fn put(&mut self, area: &str, bytes: impl Into<Bytes>) -> String {
        let key = Seeded::key(area);
        self.keys.push(key.clone());
        s3_store(&env(), Role::Worker)
            .put(&key, bytes.into())
            .await
            .expect("seed object");
        key
    }
}

impl Drop for Seeded {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        if keys.is_empty() {
            return;
        }
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                let store = s3_store(&env(), Role::Worker);
                for k in keys {
                    if let Err(e) = store.delete(&k).await {
                        eprintln!("could not delete {k}: {e}");
                    }
                }
            });
        })
        .join();
        if done.is_err() {
            eprintln!("object cleanup panicked");
        }
    }
}

// ----------------------------------------------------------------- tokens

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ring(env: &Env) -> KeyRing {
    KeyRing::parse(env.get("KIROKU_EXPORT_KEYS").expect("KIROKU_EXPORT_KEYS")).expect("ring")
}

/// The raw secret of `kid` in the configured ring.
fn secret(env: &Env, kid: &str) -> Vec<u8> {
    let spec = env.get("KIROKU_EXPORT_KEYS").unwrap();
    let s = spec
        .split(',')
        .filter_map(|e| e.trim().split_once(':'))
        .find(|(k, _)| *k == kid)
        .unwrap_or_else(|| panic!("no kid {kid} in KIROKU_EXPORT_KEYS"))
        .1;
    b64::decode(s).unwrap()
}

fn claims(path: &str, iat: i64, exp: i64) -> Claims {
    Claims {
        path: path.to_owned(),
        project_id: uuid::Uuid::new_v4().to_string(),
        artifact_id: uuid::Uuid::new_v4().to_string(),
        // Never echoed: the service always answers application/octet-stream.
        content_type: "text/html".into(),
        filename: "guion final.pdf".into(),
        iat,
        exp,
    }
}

/// A token for `path` from the configured ring, valid for two minutes.
fn token(env: &Env, path: &str) -> String {
    let t = now();
    ring(env).sign(KID, &claims(path, t, t + 120)).unwrap()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// `v1.kid.payload.mac` with a correct MAC over whatever `payload_b64` is:
/// what a holder of the signing key could make without `KeyRing::sign`'s
/// checks.
fn hand_token(env: &Env, payload_b64: &str) -> String {
    let head = format!("v1.{KID}.{payload_b64}");
    let mac = hmac_sha256(&secret(env, KID), head.as_bytes());
    format!("{head}.{}", b64::encode(mac))
}

/// A correctly signed token claiming `path`, whatever it is.
fn hand_token_for(env: &Env, path: &str) -> String {
    let t = now();
    let payload = serde_json::to_vec(&claims(path, t, t + 120)).unwrap();
    hand_token(env, &b64::encode(payload))
}

/// The token's `(head, payload_b64, mac_b64)`.
fn split(token: &str) -> (String, String, String) {
    let (head, mac) = token.rsplit_once('.').unwrap();
    let payload = head.rsplit_once('.').unwrap().1;
    (head.to_owned(), payload.to_owned(), mac.to_owned())
}

// --------------------------------------------------------------- requests

fn client() -> reqwest::Client {
    kiroku_tests::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(url: &str, token: &str) -> reqwest::Response {
    client().get(url).bearer_auth(token).send().await.unwrap()
}

/// Asserts a refusal: `status`, a JSON body that is exactly
/// `{"error": code}`, and the hardening headers.
async fn assert_refused(resp: reqwest::Response, status: u16, code: &str) {
    let got = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = resp.text().await.unwrap();
    assert_eq!(got, status, "expected {status} {code}, got {got}: {body}");
    assert_eq!(h["content-type"], "application/json", "{code}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{code}");
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {body}"));
    assert_eq!(json, json!({ "error": code }));
}

/// An answer read off the wire.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn assert_refused(&self, status: u16, code: &str, what: &str) {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{what}: {body}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body}"));
        assert_eq!(json, json!({ "error": code }), "{what}");
    }
}

/// `GET <target>` written byte for byte on a fresh TCP connection, so that
/// no client library normalises the path.
async fn raw_get(port: u16, target: &str, token: &str) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    RawAnswer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&b[..eol]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn valid_token_streams_exactly_the_stored_bytes_as_an_inert_attachment() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let data: &[u8] = b"<html><script>alert('sniff me')</script></html>\x00\x01\xff";
    let key = objs.put("final/v1/", data.to_vec()).await;
    let t = token(&env, &key);

    let resp = get(&svc.url(&key), &t).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    assert_eq!(h["cache-control"], "no-store");
    let disp = h["content-disposition"].to_str().unwrap();
    assert!(disp.starts_with("attachment"), "{disp}");
    assert!(disp.contains("filename=\"guion final.pdf\""), "{disp}");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), data);

    // The same token works again (until it expires), and HEAD has no body.
    let resp = client()
        .head(svc.url(&key))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert!(resp.bytes().await.unwrap().is_empty());

    // A valid token for an object that is not there.
    let missing = Seeded::key("final/v1/");
    assert_refused(
        get(&svc.url(&missing), &token(&env, &missing)).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_request_without_a_bearer_token_is_refused_as_missing() {
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"secret"[..]).await;

    let resp = client().get(svc.url(&key)).send().await.unwrap();
    assert_refused(resp, 401, "token_missing").await;
    let resp = client()
        .get(svc.url(&key))
        .header("authorization", "Basic a2lyb2t1Omtpcm9rdQ==")
        .send()
        .await
        .unwrap();
    assert_refused(resp, 401, "token_missing").await;
}

#[tokio::test]
async fn expired_token_is_refused_with_its_own_code() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"secret"[..]).await;
    // Expired 100 s ago: beyond the 30 s of tolerated skew.
    let t = now();
    let tok = ring(&env)
        .sign(KID, &claims(&key, t - 200, t - 100))
        .unwrap();
    assert_refused(get(&svc.url(&key), &tok).await, 403, "token_expired").await;

    // Issued two minutes in the future: not yet valid.
    let tok = ring(&env)
        .sign(KID, &claims(&key, t + 120, t + 180))
        .unwrap();
    assert_refused(get(&svc.url(&key), &tok).await, 403, "token_not_yet_valid").await;
}

#[tokio::test]
async fn token_living_longer_than_300_seconds_is_refused() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"secret"[..]).await;
    let t = now();
    // Exactly the maximum is fine…
    let tok = ring(&env).sign(KID, &claims(&key, t, t + 300)).unwrap();
    assert_eq!(get(&svc.url(&key), &tok).await.status(), 200);
    // …one second more is not, although the token is current.
    let tok = ring(&env).sign(KID, &claims(&key, t, t + 301)).unwrap();
    assert_refused(get(&svc.url(&key), &tok).await, 403, "token_lifetime").await;
    // Nor is an exp before iat.
    let tok = ring(&env).sign(KID, &claims(&key, t, t - 1)).unwrap();
    assert_refused(get(&svc.url(&key), &tok).await, 403, "token_lifetime").await;
}

#[tokio::test]
async fn token_signed_with_an_unknown_kid_is_refused() {
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"secret"[..]).await;
    let mut foreign = KeyRing::default();
    foreign
        .insert(
            "k-unknown",
            kiroku_crypto::random_array::<32>().unwrap().to_vec(),
        )
        .unwrap();
    let t = now();
    let tok = foreign.sign("k-unknown", &claims(&key, t, t + 60)).unwrap();
    assert_refused(get(&svc.url(&key), &tok).await, 403, "token_unknown_kid").await;

    // The configured kid with the wrong secret is a bad MAC, not unknown.
    let mut forged = KeyRing::default();
    forged
        .insert(KID, kiroku_crypto::random_array::<32>().unwrap().to_vec())
        .unwrap();
    let tok = forged.sign(KID, &claims(&key, t, t + 60)).unwrap();
    assert_refused(get(&svc.url(&key), &tok).await, 403, "token_bad_mac").await;
}

#[tokio::test]
async fn rotation_accepts_both_kids_while_overlapping_then_refuses_the_removed_one() {
    let env = env();
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"rotated"[..]).await;
    let new_kid = format!("rot-{}", kiroku_tests::unique());
    let new_secret = kiroku_crypto::random_array::<32>().unwrap().to_vec();
    let mut new_only = KeyRing::default();
    new_only.insert(&new_kid, new_secret.clone()).unwrap();
    let mut overlap = ring(&env);
    overlap.insert(&new_kid, new_secret).unwrap();

    let t = now();
    let old_tok = ring(&env).sign(KID, &claims(&key, t, t + 120)).unwrap();
    let new_tok = new_only.sign(&new_kid, &claims(&key, t, t + 120)).unwrap();

    // Step 1: the new kid is added next to the old one; both work.
    let both = Export::start(&[("KIROKU_EXPORT_KEYS", overlap.to_spec().to_string())]).await;
    for tok in [&old_tok, &new_tok] {
        let resp = get(&both.url(&key), tok).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b"rotated");
    }

    // Step 2: restarted with the old kid removed; only the new one works.
    let rotated = Export::start(&[("KIROKU_EXPORT_KEYS", new_only.to_spec().to_string())]).await;
    let resp = get(&rotated.url(&key), &new_tok).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"rotated");
    assert_refused(
        get(&rotated.url(&key), &old_tok).await,
        403,
        "token_unknown_kid",
    )
    .await;
    drop(both);
}

#[tokio::test]
async fn tampered_payload_or_mac_is_refused_as_a_bad_mac() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let a = objs.put("final/v1/", &b"object A"[..]).await;
    let b = objs.put("final/v1/", &b"object B"[..]).await;
    let tok = token(&env, &a);
    let (head, payload, mac) = split(&tok);

    // One character of the payload changed (in the middle, so the
    // base64url stays valid).
    let mut chars: Vec<char> = payload.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let altered: String = chars.into_iter().collect();
    let tampered = format!("v1.{KID}.{altered}.{mac}");
    assert_ne!(tampered, tok);
    assert_refused(get(&svc.url(&a), &tampered).await, 403, "token_bad_mac").await;

    // The payload re-written to name object B, the MAC kept.
    let t = now();
    let forged_payload = b64::encode(serde_json::to_vec(&claims(&b, t, t + 60)).unwrap());
    let forged = format!("v1.{KID}.{forged_payload}.{mac}");
    assert_refused(get(&svc.url(&b), &forged).await, 403, "token_bad_mac").await;

    // One bit of the MAC flipped.
    let mut raw_mac = b64::decode(&mac).unwrap();
    raw_mac[0] ^= 1;
    let flipped = format!("{head}.{}", b64::encode(&raw_mac));
    assert_refused(get(&svc.url(&a), &flipped).await, 403, "token_bad_mac").await;
    let mut raw_mac = b64::decode(&mac).unwrap();
    raw_mac[31] ^= 0x80;
    let flipped = format!("{head}.{}", b64::encode(&raw_mac));
    assert_refused(get(&svc.url(&a), &flipped).await, 403, "token_bad_mac").await;

    // The original still works: the refusals above were about the changes.
    assert_eq!(get(&svc.url(&a), &tok).await.status(), 200);
}

#[tokio::test]
async fn truncated_or_non_base64_tokens_are_refused_as_malformed() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"secret"[..]).await;
    let tok = token(&env, &key);
    let (head, _payload, mac) = split(&tok);
    let url = svc.url(&key);

    // Truncated: the MAC short by one and by four characters, the MAC gone
    // (with and without its dot), only the version left.
    for cut in [
        tok[..tok.len() - 1].to_owned(),
        tok[..tok.len() - 4].to_owned(),
        format!("{head}."),
        head.clone(),
        "v1.".to_owned(),
    ] {
        assert_refused(get(&url, &cut).await, 400, "token_malformed").await;
    }

    // Not base64url: in the MAC, in the payload (with a correct MAC over
    // it, so it is the decoding that fails), standard-alphabet and padded
    // spellings, and no structure at all.
    let mut not_b64 = vec![
        format!("{head}.{}", "*".repeat(mac.len())),
        hand_token(&env, "!!not*base64!!"),
        format!("{head}.{mac}="),
        "definitely not a token".to_owned(),
    ];
    let std_mac = mac.replace('-', "+").replace('_', "/");
    if std_mac != mac {
        not_b64.push(format!("{head}.{std_mac}"));
    }
    for bad in &not_b64 {
        assert_refused(get(&url, bad).await, 400, "token_malformed").await;
    }

    // Another version is its own refusal.
    let v2 = format!("v2{}", &tok[2..]);
    assert_refused(get(&url, &v2).await, 403, "token_version").await;
}

#[tokio::test]
async fn token_for_one_object_does_not_open_another() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let a = objs.put("final/v1/", &b"object A"[..]).await;
    let b = objs.put("final/v1/", &b"object B"[..]).await;
    let tok_a = token(&env, &a);

    assert_eq!(get(&svc.url(&a), &tok_a).await.status(), 200);
    assert_refused(get(&svc.url(&b), &tok_a).await, 403, "token_path_mismatch").await;
    // A prefix or an extension of the signed path is another path.
    let parent = a.rsplit_once('/').unwrap().0;
    assert_refused(
        get(&svc.url(parent), &tok_a).await,
        403,
        "token_path_mismatch",
    )
    .await;
    assert_refused(
        get(&svc.url(&format!("{a}/x")), &tok_a).await,
        403,
        "token_path_mismatch",
    )
    .await;
}

#[tokio::test]
async fn traversal_in_the_raw_path_is_never_resolved() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let a = objs.put("final/v1/", &b"object A"[..]).await;
    let work = objs.put("work/", &b"work secret"[..]).await;
    let ingest = objs.put("ingest/", &b"ingest secret"[..]).await;
    let tok_a = token(&env, &a);
    let (u, rest) = a["final/v1/".len()..].split_once('/').unwrap();
    let (p, art) = rest.split_once('/').unwrap();

    // Sanity: the raw request reaches the service as sent, and a plain
    // request with the right token is served.
    let ok = raw_get(svc.port, &format!("/objects/{a}"), &tok_a).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body, b"object A");
    assert_eq!(ok.header("content-type"), Some("application/octet-stream"));

    // Paths that would name object A (or the work/ and ingest/ objects)
    // once resolved or decoded. With A's token they are other paths; with a
    // correctly signed token naming them exactly they are outside the area.
    let enc_a: String = art.bytes().map(|b| format!("%{b:02X}")).collect();
    let traversals = [
        format!("final/v1/{u}/{p}/x/../{art}"),
        format!("final/v1/{u}/x/../{p}/{art}"),
        format!("final/v1/{u}/{p}/./{art}"),
        format!("final/v1/../../{work}"),
        format!("final/v1/{u}/../../../{ingest}"),
        format!("final/v1/{u}/{p}/x/%2e%2e/{art}"),
        format!("final/v1/{u}/{p}/x/%2E%2E/{art}"),
        format!("final/v1/%2e%2e/%2e%2e/{work}"),
        format!("final/v1/{u}/{p}/x%2f..%2f{art}"),
        format!("final/v1/{u}/{p}/{enc_a}"),
        format!("final/v1//{u}/{p}/{art}"),
        format!("final/v1/{u}//{p}/{art}"),
        format!("final/v1/{u}/{p}//{art}"),
        format!("/{a}"),
    ];
    for path in &traversals {
        let target = format!("/objects/{path}");
        let got = raw_get(svc.port, &target, &tok_a).await;
        got.assert_refused(
            403,
            "token_path_mismatch",
            &format!("A's token for {target}"),
        );

        let got = raw_get(svc.port, &target, &hand_token_for(&env, path)).await;
        got.assert_refused(
            403,
            "token_outside_area",
            &format!("own token for {target}"),
        );
    }

    // Traversal before the route is not resolved either: `/objects/../…`
    // is the key `../objects/…`, and the others match no route at all.
    let got = raw_get(svc.port, &format!("/objects/../objects/{a}"), &tok_a).await;
    got.assert_refused(403, "token_path_mismatch", "/objects/../objects/…");
    for target in [format!("/x/../objects/{a}"), format!("//objects/{a}")] {
        let got = raw_get(svc.port, &target, &tok_a).await;
        assert_eq!(got.status, 404, "{target}: {got:?}");
        assert!(got.body.is_empty(), "{target}: {got:?}");
    }
}

#[tokio::test]
async fn objects_outside_final_v1_are_refused_even_with_a_correct_signature() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let a = objs.put("final/v1/", &b"object A"[..]).await;
    let work = objs.put("work/", &b"work secret"[..]).await;
    let ingest = objs.put("ingest/", &b"ingest secret"[..]).await;
    let other = objs.put("final/v2/", &b"another version"[..]).await;

    // The hand-made MAC is the ring's MAC (so the refusals below are about
    // the path, not the signature).
    let c = claims(&a, now(), now() + 60);
    assert_eq!(
        hand_token(&env, &b64::encode(serde_json::to_vec(&c).unwrap())),
        ring(&env).sign(KID, &c).unwrap()
    );

    for key in [&work, &ingest, &other] {
        assert!(ring(&env).sign(KID, &claims(key, 0, 60)).is_err());
        // A correctly signed token naming the object exactly.
        assert_refused(
            get(&svc.url(key), &hand_token_for(&env, key)).await,
            403,
            "token_outside_area",
        )
        .await;
        // A valid final/v1/ token used for it.
        assert_refused(
            get(&svc.url(key), &token(&env, &a)).await,
            403,
            "token_path_mismatch",
        )
        .await;
    }
}

#[tokio::test]
async fn cors_allows_the_app_origin_only() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"cors"[..]).await;
    let tok = token(&env, &key);
    let url = svc.url(&key);

    let resp = client()
        .get(&url)
        .bearer_auth(&tok)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP_ORIGIN);
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in ["content-length", "content-range", "content-disposition"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"cors");

    // Refusals carry CORS too, so the app can read the error code.
    let resp = client()
        .get(&url)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], APP_ORIGIN);
    assert_refused(resp, 401, "token_missing").await;

    for origin in [
        "https://evil.example",
        "http://studio.kiroku.test:8443",
        "https://studio.kiroku.test",
        "https://studio.kiroku.test:8443.evil.example",
        "https://studio.kiroku.test:8443/app",
        "null",
    ] {
        let resp = client()
            .get(&url)
            .bearer_auth(&tok)
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{origin}");
        assert!(
            !resp.headers().contains_key("access-control-allow-origin"),
            "{origin} was allowed"
        );
        let resp = client()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();
        for h in [
            "access-control-allow-origin",
            "access-control-allow-methods",
            "access-control-allow-headers",
        ] {
            assert!(!resp.headers().contains_key(h), "{origin} preflight: {h}");
        }
    }

    // Preflight from the app: GET and HEAD with authorization and range.
    let resp = client()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization, range")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], APP_ORIGIN);
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    let allowed: Vec<&str> = methods.split(',').map(str::trim).collect();
    assert!(
        allowed.contains(&"GET") && allowed.contains(&"HEAD"),
        "{methods}"
    );
    assert!(
        !allowed
            .iter()
            .any(|m| ["PUT", "POST", "DELETE"].contains(m)),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    let allowed: Vec<&str> = headers.split(',').map(str::trim).collect();
    assert!(
        allowed.contains(&"authorization") && allowed.contains(&"range"),
        "{headers}"
    );
}

#[tokio::test]
async fn range_requests_return_exactly_the_asked_bytes() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();
    let data: Vec<u8> = (0..100u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect();
    let size = data.len();
    let key = objs.put("final/v1/", data.clone()).await;
    let tok = token(&env, &key);
    let ranged = |r: String| {
        client()
            .get(svc.url(&key))
            .bearer_auth(&tok)
            .header("range", r)
            .send()
    };

    let resp = ranged("bytes=10-19".into()).await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 10-19/{size}").as_str()
    );
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[10..20]);

    let resp = ranged("bytes=-5".into()).await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes {}-{}/{size}", size - 5, size - 1).as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[size - 5..]);

    // Open-ended and over-long ranges end at the last byte.
    let resp = ranged("bytes=95-".into()).await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[95..]);
    let resp = ranged("bytes=90-1000".into()).await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 90-99/{size}").as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[90..]);

    // Starting at the size: nothing to serve.
    let resp = ranged(format!("bytes={size}-")).await.unwrap();
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{size}").as_str()
    );
    assert_refused(resp, 416, "range_not_satisfiable").await;
    let resp = ranged("bytes=20-10".into()).await.unwrap();
    assert_refused(resp, 416, "range_not_satisfiable").await;

    // Several ranges are not supported and the whole object is served.
    let resp = ranged("bytes=0-1,5-6".into()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &data[..]);
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::test]
async fn a_one_gib_object_streams_in_bounded_memory() {
    let env = env();
    let svc = Export::start(&[]).await;
    let mut objs = Seeded::new();

    // A pseudo-random pattern of prime length, repeated: a dropped,
    // repeated or reordered chunk changes the hash.
    let mut x: u32 = 0x9e37_79b9;
    let pattern: Vec<u8> = (0..65_521)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let started = Instant::now();
    let mut data = Vec::with_capacity(GIB as usize);
    while (data.len() as u64) < GIB {
        let n = pattern.len().min(GIB as usize - data.len());
        data.extend_from_slice(&pattern[..n]);
    }
    let expected: [u8; 32] = Sha256::digest(&data).into();
    let key = objs.put("final/v1/", data).await;
    println!("1 GiB object built and stored in {:?}", started.elapsed());

    let pid = svc.pid();
    let idle = rss(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak.max(rss(pid))
        })
    };

    let started = Instant::now();
    let mut resp = get(&svc.url(&key), &token(&env, &key)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], GIB.to_string().as_str());
    let (mut total, mut hasher, mut chunks) = (0u64, Sha256::new(), 0u64);
    // `Response::chunk` reads the body incrementally like `bytes_stream()`
    // (which would need futures-util's StreamExt to poll).
    while let Some(chunk) = resp.chunk().await.expect("body chunk") {
        total += chunk.len() as u64;
        chunks += 1;
        hasher.update(&chunk);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let got: [u8; 32] = hasher.finalize().into();

    println!(
        "export RSS idle {:.1} MiB, peak {:.1} MiB while streaming 1 GiB in {elapsed:?} \
         ({:.0} MiB/s, {chunks} chunks)",
        mib(idle),
        mib(peak),
        1024.0 / elapsed.as_secs_f64(),
    );
    assert_eq!(total, GIB, "streamed length");
    assert_eq!(got, expected, "streamed bytes differ from the stored ones");
    assert!(
        peak < 150 * 1024 * 1024,
        "export service peaked at {:.1} MiB (idle {:.1} MiB)",
        mib(peak),
        mib(idle)
    );
}

#[tokio::test]
async fn a_burst_beyond_200_requests_is_rate_limited() {
    let env = env();
    // Its own instance: the limiter is per process and per client address.
    // Its audit lines for refused requests are warnings; keep them quiet.
    let svc = Export::start(&[("KIROKU_LOG", "warn,audit=error".into())]).await;
    let mut objs = Seeded::new();
    let key = objs.put("final/v1/", &b"limited"[..]).await;
    let tok = token(&env, &key);
    let http = client();

    let started = Instant::now();
    let tasks: Vec<_> = (0..260)
        .map(|_| {
            let req = http.get(svc.url(&key)).bearer_auth(&tok);
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let resp = t.await.unwrap();
        match resp.status().as_u16() {
            200 => {
                assert_eq!(resp.bytes().await.unwrap().as_ref(), b"limited");
                ok += 1;
            }
            429 => {
                assert_refused(resp, 429, "rate_limited").await;
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let elapsed = started.elapsed();
    println!("260 requests in {elapsed:?}: {ok} served, {limited} limited");
    assert_eq!(ok + limited, 260);
    assert!(ok >= 200, "the burst of 200 was not honoured: {ok} served");
    // At 20/s the bucket refills by at most 20 × elapsed after the burst.
    let refill = (20.0 * elapsed.as_secs_f64()).ceil() as i32 + 1;
    assert!(ok <= 200 + refill, "{ok} served in {elapsed:?}");
    assert!(limited >= 1, "no request was limited");

    // The bucket refills at 20 per second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = get(&svc.url(&key), &tok).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"limited");
}
