//! The insider drill: with only what the app itself holds (its
//! configuration, its database role, its Redis, its S3 key, its logs and
//! the export tokens its signing key can mint), look for the routine in
//! plaintext and for anything that opens a script. Neither may be found.
//!
//! Run by `tests/tests/insider.rs` after a scripted recording, and by the
//! browser story (`tests/browser/story.test.mjs`, through the
//! `insider_drill` binary) right after the real one.

use anyhow::{Context, bail, ensure};
use fred::interfaces::{ClientLike, KeysInterface, StreamsInterface};
use kiroku_app::config::AppConfig;
use kiroku_crypto::kdf::{KdfParams, Key32};
use kiroku_crypto::token::Claims;
use kiroku_crypto::{envelope, userkey};
use kiroku_storage::{Role, StorageError, Store};
use sqlx::Row;

/// id, project id, kind, object key, wrapped data key, content type, file name.
type ArtifactRow = (
    uuid::Uuid,
    uuid::Uuid,
    String,
    String,
    Vec<u8>,
    String,
    String,
);

/// What the drill is given besides the app's configuration.
pub struct Drill {
    /// Everything the app process wrote to stdout and stderr.
    pub app_logs: String,
    /// Sentences that must not appear anywhere in plaintext.
    pub sentences: Vec<String>,
    /// Strings that must never be logged (passwords, tokens).
    pub secrets: Vec<String>,
    /// The performer, whose password is the positive control: it, and only
    /// it, opens the script.
    pub username: String,
    pub password: String,
}

/// What the drill looked at, for the caller to report.
#[derive(Debug, Default)]
pub struct Findings {
    pub tables: usize,
    pub rows: usize,
    pub redis_keys: usize,
    pub artifacts: usize,
    pub candidates: usize,
    pub log_bytes: usize,
}

/// Lowercase, unaccented, letters and digits only, single spaces: the
/// routine is found however a dump cases, accents or punctuates it.
fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_space = true;
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'á' | 'à' | 'ä' | 'â' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ñ' => 'n',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        };
        if c != ' ' {
            out.push(c);
            after_space = false;
        } else if !after_space {
            out.push(' ');
            after_space = true;
        }
    }
    out
}

/// Four-word windows of each sentence, folded: any of them in a dump
/// means the routine leaked.
fn needles(sentences: &[String]) -> Vec<String> {
    sentences
        .iter()
        .flat_map(|s| {
            let folded = fold(s);
            let words: Vec<&str> = folded.split_whitespace().collect();
            words.windows(4).map(|w| w.join(" ")).collect::<Vec<_>>()
        })
        .collect()
}

fn no_plaintext(needles: &[String], place: &str, haystack: &str) -> anyhow::Result<()> {
    let hay = fold(haystack);
    for n in needles {
        ensure!(!hay.contains(n), "the routine leaked into {place}: {n:?}");
    }
    Ok(())
}

/// The text of every `bytea` value in a `to_jsonb` dump, where PostgreSQL
/// writes them as a JSON string `"\\x"` and hex digits: text kept as bytes
/// is searched too.
fn decoded_bytea(dump: &str) -> String {
    let mut out = String::new();
    for part in dump.split(r#""\\x"#).skip(1) {
        let hex: Vec<u8> = part
            .bytes()
            .take_while(u8::is_ascii_hexdigit)
            .collect::<Vec<_>>();
        let bytes: Vec<u8> = hex
            .chunks_exact(2)
            .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
            .collect();
        out.push_str(&String::from_utf8_lossy(&bytes));
        out.push('\n');
    }
    out
}

/// The bytes of an even-length string of hex digits.
fn hex_bytes(w: &str) -> Option<Vec<u8>> {
    if !w.len().is_multiple_of(2) || !w.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..w.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&w[i..i + 2], 16).ok())
        .collect()
}

/// A sealed artifact as fetched through the export service.
struct Sealed {
    id: String,
    kind: String,
    object: Vec<u8>,
    dek_enc: Vec<u8>,
}

/// The first bytes every file of a kind starts with.
fn known_prefix(kind: &str) -> Option<&'static [u8]> {
    match kind {
        "md" => Some(b"# "),
        "html" => Some(b"<!do"),
        "pdf" => Some(b"%PDF"),
        "docx" => Some(b"PK\x03\x04"),
        _ => None,
    }
}

/// Whether `key` may be the artifact's data key: its first AES-GCM
/// keystream block (counter 2 after the 96-bit nonce) must turn the first
/// ciphertext bytes into the prefix every file of that kind starts with. A
/// wrong key passes with odds of 2^-16 or less, and is then refused by the
/// full authenticated open; the screen saves a pass over the whole
/// artifact for each of the tens of thousands of candidate windows.
fn could_open(key: &[u8], artifact: &Sealed) -> bool {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    let (Some(prefix), Some(nonce), Some(first)) = (
        known_prefix(&artifact.kind),
        artifact.object.get(4..16),
        artifact.object.get(16..32),
    ) else {
        return true;
    };
    let Ok(cipher) = aes::Aes256::new_from_slice(key) else {
        return true;
    };
    let mut block = [0u8; 16];
    block[..12].copy_from_slice(nonce);
    block[15] = 2;
    let mut block = block.into();
    cipher.encrypt_block(&mut block);
    prefix
        .iter()
        .enumerate()
        .all(|(i, p)| first[i] ^ block[i] == *p)
}

/// Every byte string that could be a key must open nothing: not as a
/// private key, and no 32-byte stretch of it as a data key (tried on the
/// smallest artifact: a data key is per file, and any file would do) or as
/// a key-encryption key of a wrapped private key.
fn opens_nothing(
    candidates: &[Vec<u8>],
    artifact: &Sealed,
    wrapped_keys: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    for c in candidates.iter().filter(|c| c.len() <= 64 * 1024) {
        ensure!(
            userkey::parse_private_key(c).is_err(),
            "a private key was found in plain"
        );
        for w in c.windows(32).step_by(4) {
            let key = Key32(w.try_into()?);
            ensure!(
                !could_open(w, artifact)
                    || envelope::open_with(&key, &artifact.id, &artifact.kind, &artifact.object)
                        .is_err(),
                "a data key was found"
            );
            for (user_id, wrapped) in wrapped_keys {
                ensure!(
                    userkey::unwrap(&key, user_id, wrapped).is_err(),
                    "a key-encryption key was found"
                );
            }
        }
    }
    Ok(())
}

/// Runs the drill against the deployment `config` describes.
pub async fn run(config: &AppConfig, drill: &Drill) -> anyhow::Result<Findings> {
    let started = std::time::Instant::now();
    let needles = needles(&drill.sentences);
    ensure!(!needles.is_empty(), "no sentences to look for");
    let mut found = Findings::default();

    tracing::info!(
        phase = "database",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insider drill"
    );
    // ---- The database, through the app's role: every table it can read.
    let db = sqlx::PgPool::connect(&config.database_url)
        .await
        .context("connecting as the app")?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&db)
    .await?;
    let mut dump = String::new();
    for t in &tables {
        // Whole rows as text where the role may read them; denied otherwise.
        match sqlx::query(&format!("SELECT to_jsonb(x)::text AS row FROM {t} x"))
            .fetch_all(&db)
            .await
        {
            Ok(rows) => {
                found.tables += 1;
                for r in rows {
                    found.rows += 1;
                    dump.push_str(&r.get::<String, _>("row"));
                    dump.push('\n');
                }
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {}
            Err(e) => bail!("dumping {t}: {e}"),
        }
    }
    ensure!(found.rows > 0, "the app's role read no rows at all");
    no_plaintext(&needles, "the app's database view", &dump)?;
    no_plaintext(&needles, "the app's database bytes", &decoded_bytea(&dump))?;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for (col, table) in [
        ("private_key_enc", "users"),
        ("kdf_salt", "users"),
        ("public_key", "user_public_keys"),
        ("dek_enc", "artifacts"),
        ("sha256", "artifacts"),
    ] {
        let vals: Vec<Option<Vec<u8>>> = sqlx::query_scalar(&format!("SELECT {col} FROM {table}"))
            .fetch_all(&db)
            .await?;
        candidates.extend(vals.into_iter().flatten());
    }

    tracing::info!(
        phase = "redis",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insider drill"
    );
    // ---- Redis: the session and the queue databases, every key.
    let mut redis_text = String::new();
    for url in [&config.session_redis_url, &config.queue_redis_url] {
        let client = kiroku_app::redis_pool(url).await?;
        let keys: Vec<String> = client.custom(fred::cmd!("KEYS"), vec!["*"]).await?;
        for k in keys {
            found.redis_keys += 1;
            redis_text.push_str(&k);
            let kind: String = client.r#type(&k).await?;
            let value: Vec<u8> = match kind.as_str() {
                "string" => client
                    .get::<Option<Vec<u8>>, _>(&k)
                    .await?
                    .unwrap_or_default(),
                "stream" => {
                    let entries: Vec<(String, Vec<(String, String)>)> =
                        client.xrange(&k, "-", "+", None).await?;
                    format!("{entries:?}").into_bytes()
                }
                "hash" | "zset" | "list" | "set" => {
                    // Raw bytes, so that nothing fails to convert and is
                    // silently left unread.
                    let (cmd, args) = match kind.as_str() {
                        "hash" => ("HGETALL", vec![k.as_str()]),
                        "zset" => ("ZRANGE", vec![k.as_str(), "0", "-1"]),
                        "list" => ("LRANGE", vec![k.as_str(), "0", "-1"]),
                        _ => ("SMEMBERS", vec![k.as_str()]),
                    };
                    let members: Vec<Vec<u8>> = client
                        .custom(fred::cmd!(cmd), args)
                        .await
                        .with_context(|| format!("reading the {kind} {k}"))?;
                    members.join(&b'\n')
                }
                _ => Vec::new(),
            };
            redis_text.push_str(&String::from_utf8_lossy(&value));
            redis_text.push('\n');
            candidates.push(value);
        }
        let _ = client.quit().await;
    }
    no_plaintext(&needles, "Redis", &redis_text)?;

    tracing::info!(
        phase = "storage",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insider drill"
    );
    // ---- Storage with the app's key: it reads and lists nothing.
    let store = Store::open(&config.storage, Role::App)?;
    let rows: Vec<ArtifactRow> = sqlx::query_as(
        "SELECT id, project_id, kind, object_key, dek_enc, content_type, file_name
               FROM artifacts",
    )
    .fetch_all(&db)
    .await?;
    ensure!(!rows.is_empty(), "there is no artifact to attack");
    for prefix in ["ingest/", "work/", "final/v1/", ""] {
        ensure!(
            matches!(store.list(prefix).await, Err(StorageError::AccessDenied)),
            "the app's key listed {prefix:?}"
        );
    }
    for (_, _, _, key, ..) in &rows {
        ensure!(
            matches!(store.get(key, None).await, Err(StorageError::AccessDenied)),
            "the app's key read {key}"
        );
    }

    tracing::info!(
        phase = "tokens",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insider drill"
    );
    // ---- Tokens its signing key can mint: the export service hands out
    // ciphertext, and the ciphertext holds no plaintext.
    let signing = config
        .export_keys
        .as_ref()
        .context("the app has no export signing key")?;
    let http = crate::http_client().build()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let mut artifacts = Vec::new();
    for (id, project, kind, key, dek_enc, content_type, file_name) in rows {
        let token = signing.ring.sign(
            &signing.kid,
            &Claims {
                path: key.clone(),
                project_id: project.to_string(),
                artifact_id: id.to_string(),
                content_type,
                filename: file_name,
                iat: now,
                exp: now + 60,
            },
        )?;
        let resp = http
            .get(format!(
                "{}/objects/{key}",
                config.export_public_url.trim_end_matches('/')
            ))
            .bearer_auth(&token)
            .send()
            .await
            .context("fetching through the export service")?;
        ensure!(
            resp.status() == 200,
            "the export service answered {} for a minted token",
            resp.status()
        );
        let object = resp.bytes().await?.to_vec();
        ensure!(object.starts_with(envelope::MAGIC), "{kind} is not sealed");
        no_plaintext(
            &needles,
            "the ciphertext",
            &String::from_utf8_lossy(&object),
        )?;
        candidates.push(token.into_bytes());
        artifacts.push(Sealed {
            id: id.to_string(),
            kind,
            object,
            dek_enc,
        });
    }
    found.artifacts = artifacts.len();

    tracing::info!(
        phase = "logs",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insider drill"
    );
    // ---- The app's logs.
    found.log_bytes = drill.app_logs.len();
    no_plaintext(&needles, "the app's logs", &drill.app_logs)?;
    for secret in drill.secrets.iter().filter(|s| s.len() >= 8) {
        ensure!(
            !drill.app_logs.contains(secret.as_str()),
            "a secret is in the app's logs"
        );
    }
    // A key in a log line is a token of its own: 32 bytes in base64 or hex.
    // (Trying every 32-byte window of every token, as for the stored
    // values above, costs a full AES-GCM pass over an artifact per window:
    // hours for a debug-level log.)
    candidates.extend(
        drill
            .app_logs
            .split(|c: char| c.is_whitespace() || "\"'=,:;{}[]()".contains(c))
            .filter(|w| w.len() >= 40)
            .filter_map(|w| {
                kiroku_crypto::b64::decode(w)
                    .ok()
                    .or_else(|| hex_bytes(w))
                    .filter(|b| b.len() == 32)
            }),
    );

    tracing::info!(
        phase = "candidates",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insider drill"
    );
    // ---- Nothing gathered opens a script.
    let wrapped: Vec<(String, Vec<u8>)> = sqlx::query_as::<_, (uuid::Uuid, Vec<u8>)>(
        "SELECT id, private_key_enc FROM users WHERE private_key_enc IS NOT NULL",
    )
    .fetch_all(&db)
    .await?
    .into_iter()
    .map(|(id, w)| (id.to_string(), w))
    .collect();
    found.candidates = candidates.len();
    let smallest = artifacts
        .iter()
        .min_by_key(|a| a.object.len())
        .context("no artifact")?;
    opens_nothing(&candidates, smallest, &wrapped)?;

    tracing::info!(
        phase = "password",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insider drill"
    );
    // ---- Only the password opens it (the drill's positive control: the
    // material above was real, the attack just lacked the password).
    let (user_id, salt, m, t, p, wrapped_key): (uuid::Uuid, Vec<u8>, i32, i32, i32, Vec<u8>) =
        sqlx::query_as(
            "SELECT id, kdf_salt, kdf_m_kib, kdf_t, kdf_p, private_key_enc
               FROM users WHERE username = $1",
        )
        .bind(&drill.username)
        .fetch_one(&db)
        .await
        .context("the performer's row")?;
    let params = KdfParams {
        m_kib: m as u32,
        t: t as u32,
        p: p as u32,
    };
    let derived = kiroku_crypto::kdf::derive(&drill.password, &salt, params)?;
    let pkcs8 = userkey::unwrap(&derived.kek, &user_id.to_string(), &wrapped_key)
        .context("the password does not unwrap the private key")?;
    let private = userkey::parse_private_key(&pkcs8)?;
    for a in &artifacts {
        envelope::open(&private, &a.id, &a.kind, &a.dek_enc, &a.object)
            .with_context(|| format!("the password does not open the {}", a.kind))?;
    }
    db.close().await;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needles_are_found_whatever_the_case_accents_or_punctuation() {
        let n = needles(&["Piense en un número, por favor.".to_owned()]);
        assert_eq!(
            n,
            vec![
                "piense en un numero",
                "en un numero por",
                "un numero por favor"
            ]
        );
        assert!(no_plaintext(&n, "x", "…PIENSE en  un numero!").is_err());
        assert!(no_plaintext(&n, "x", "piense en uno").is_ok());
    }

    #[test]
    fn the_key_screen_lets_the_real_key_through_and_almost_nothing_else() {
        let dek = [7u8; 32];
        for (kind, plain) in [
            ("md", &b"# La carta\n\nBuenas noches."[..]),
            ("pdf", b"%PDF-1.7 ..."),
            ("docx", b"PK\x03\x04 zip"),
            ("html", b"<!doctype html><p>x</p>"),
        ] {
            let object = envelope::seal_with(&Key32(dek), &[9u8; 12], "a1", kind, plain).unwrap();
            let sealed = Sealed {
                id: "a1".into(),
                kind: kind.into(),
                object,
                dek_enc: Vec::new(),
            };
            assert!(could_open(&dek, &sealed), "{kind}");
            let passed = (0u8..=255)
                .filter(|b| could_open(&[*b; 32], &sealed))
                .count();
            assert!(passed <= 1, "{kind}: {passed} wrong keys passed");
        }
    }

    #[test]
    fn bytea_values_in_a_dump_are_decoded() {
        let dump = r#"{"a": "\\x7069656e736520656e", "b": 1}"#;
        assert_eq!(decoded_bytea(dump), "piense en\n");
    }
}
