//! The insider drill. A routine is recorded and processed for real (the
//! app binary, its WebSocket, the workers' jobs on SeaweedFS); then, with
//! only what the app itself holds (its database role, its Redis, its S3
//! key, its logs, the export tokens it can mint), we look for the routine
//! and for any key that opens the script. Neither may be found.

use std::sync::Arc;

use fred::interfaces::{ClientLike, KeysInterface};
use futures_util::{SinkExt, StreamExt};
use kiroku_crypto::kdf::Key32;
use kiroku_crypto::{envelope, userkey};
use kiroku_pipeline::process;
use kiroku_storage::{Role, StorageError};
use kiroku_tests::{Browser, Scripted, TestApp, env, fixture, s3_store, worker_for};
use serde_json::json;
use sqlx::Row;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn routine() -> Vec<String> {
    std::fs::read_to_string(fixture("routine-es.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Distinctive fragments of each sentence, lowercased.
fn needles() -> Vec<String> {
    routine()
        .iter()
        .flat_map(|s| {
            let words: Vec<&str> = s.split_whitespace().collect();
            words
                .windows(4)
                .map(|w| w.join(" ").to_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_no_plaintext(place: &str, haystack: &str) {
    let hay = haystack.to_lowercase();
    for n in needles() {
        assert!(!hay.contains(&n), "the routine leaked into {place}: {n:?}");
    }
}

/// Every byte string that could be a key must open nothing: not as a
/// private key, and no 32-byte stretch of it as a data key (tried on the
/// smallest artifact: a data key is per file, and any file would do) or as
/// a key-encryption key of a wrapped private key.
fn assert_opens_nothing(
    candidates: &[Vec<u8>],
    artifact: &(String, String, Vec<u8>, Vec<u8>),
    wrapped_keys: &[(String, Vec<u8>)],
) {
    let (id, kind, object, _) = artifact;
    for c in candidates.iter().filter(|c| c.len() <= 64 * 1024) {
        assert!(
            userkey::parse_private_key(c).is_err(),
            "a private key was found in plain"
        );
        for w in c.windows(32).step_by(4) {
            let key = Key32(w.try_into().unwrap());
            assert!(
                envelope::open_with(&key, id, kind, object).is_err(),
                "a data key was found"
            );
            for (user_id, wrapped) in wrapped_keys {
                assert!(
                    userkey::unwrap(&key, user_id, wrapped).is_err(),
                    "a kek was found"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_compromised_app_learns_nothing_of_the_routine() {
    let app = TestApp::start(&[]).await;
    // The app as a separate process, logging to a file we read afterwards.
    let port = kiroku_tests::free_port();
    let log_path =
        std::env::temp_dir().join(format!("kiroku-insider-{}.log", kiroku_tests::unique()));
    let log = std::fs::File::create(&log_path).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = std::process::Command::new(kiroku_tests::bin_dir().join("kiroku"))
        .arg("serve")
        .env("KIROKU_STORAGE", "s3")
        .env("KIROKU_APP_DATABASE_URL", &app.db.app_url)
        .env("KIROKU_APP_LISTEN", format!("127.0.0.1:{port}"))
        .env("KIROKU_PUBLIC_URL", &base)
        .env("KIROKU_REDIS_PREFIX", &app.config.redis_prefix)
        .env("KIROKU_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    kiroku_tests::wait_ready(&format!("{base}/readyz"), 30)
        .await
        .expect("app up");

    // A performer records the routine through the app.
    let password = "la señora de la bufanda roja 37";
    let temp = app.add_user("maga").await;
    let mut b = Browser::new(&base);
    b.open_login().await;
    let (_, answer) = b.login("maga", &temp).await;
    let user_id = answer["user_id"].as_str().unwrap().to_owned();
    let (status, _pair) = b
        .setup(&user_id, password, kiroku_crypto::kdf::KdfParams::FLOOR)
        .await;
    assert_eq!(status, 200);
    let started: serde_json::Value = b
        .post_json(
            "/api/project/start",
            &json!({ "title": "Predicción", "audio_type": "audio/webm" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let project = started["project_id"].as_str().unwrap().to_owned();
    let audio = {
        let out = std::env::temp_dir().join(format!("kiroku-{}.webm", kiroku_tests::unique()));
        assert!(
            std::process::Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(fixture("routine-es.wav"))
                .args(["-c:a", "libopus", "-b:a", "32k", "-f", "webm"])
                .arg(&out)
                .status()
                .unwrap()
                .success()
        );
        std::fs::read(out).unwrap()
    };
    let mut req = format!("ws://127.0.0.1:{port}/ws/audio?project={project}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "cookie",
        format!("kiroku_session={}", b.session_cookie().unwrap())
            .parse()
            .unwrap(),
    );
    req.headers_mut().insert("origin", base.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let parts: Vec<&[u8]> = audio.chunks(audio.len().div_ceil(5)).collect();
    for (seq, part) in parts.iter().enumerate() {
        let mut frame = (seq as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(part);
        ws.send(Message::Binary(frame.into())).await.unwrap();
        let ack = ws.next().await.unwrap().unwrap();
        assert_eq!(ack.to_text().unwrap(), format!("{{\"ack\":{seq}}}"));
    }
    let photo = std::fs::read(fixture("photos/coffee.jpg")).unwrap();
    let resp = b
        .http
        .post(format!(
            "{base}/api/photo?project_id={project}&photo_id={}&offset_ms=1000",
            uuid::Uuid::new_v4()
        ))
        .header("x-csrf-token", &b.csrf)
        .body(photo)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stop = b
        .post_json(
            "/api/project/stop",
            &json!({ "project_id": project, "last_seq": parts.len() - 1, "duration_ms": 53000 }),
        )
        .await;
    assert_eq!(stop.status(), 200);

    // The workers turn it into a script.
    let worker = worker_for(&app, Some(Arc::new(Scripted(routine())))).await;
    let project_id: uuid::Uuid = project.parse().unwrap();
    process::prepare(&worker, project_id).await.unwrap();
    while process::transcribe(&worker, project_id).await.is_ok() {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM segments WHERE project_id = $1 AND status <> 'done'",
        )
        .bind(project_id)
        .fetch_one(&worker.db)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
    }
    process::finalize(&worker, project_id).await.unwrap();
    // The performer reads it (the app mints a token; the export service would
    // serve ciphertext).
    let artifact_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM artifacts WHERE kind = 'md'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let grant: serde_json::Value = b
        .post_json(&format!("/api/artifacts/{artifact_id}/token"), &json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert!(grant["token"].is_string());

    // ---- The drill: only what the app holds. ----
    let app_db = sqlx::PgPool::connect(&app.db.app_url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&app_db)
    .await
    .unwrap();
    let mut dump = String::new();
    let mut binaries: Vec<Vec<u8>> = Vec::new();
    for t in &tables {
        // Whole rows as text where the role may read them; denied otherwise.
        match sqlx::query(&format!("SELECT to_jsonb(x)::text AS row FROM {t} x"))
            .fetch_all(&app_db)
            .await
        {
            Ok(rows) => {
                for r in rows {
                    let row: String = r.get("row");
                    dump.push_str(&row);
                    dump.push('\n');
                }
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {}
            Err(e) => panic!("dumping {t}: {e}"),
        }
    }
    assert!(!tables.is_empty() && dump.contains(&project));
    assert_no_plaintext("the app's database view", &dump);
    for (col, table) in [
        ("private_key_enc", "users"),
        ("public_key", "user_public_keys"),
        ("dek_enc", "artifacts"),
        ("sha256", "artifacts"),
        ("kdf_salt", "users"),
    ] {
        let vals: Vec<Option<Vec<u8>>> = sqlx::query_scalar(&format!("SELECT {col} FROM {table}"))
            .fetch_all(&app_db)
            .await
            .unwrap();
        binaries.extend(vals.into_iter().flatten());
    }

    // Redis, both the session and the queue databases.
    let mut redis_text = String::new();
    for url in [&app.config.session_redis_url, &app.config.queue_redis_url] {
        let client = kiroku_app::redis_pool(url).await.unwrap();
        let keys: Vec<String> = client.custom(fred::cmd!("KEYS"), vec!["*"]).await.unwrap();
        for k in keys {
            let kind: String = client.r#type(&k).await.unwrap();
            let value = match kind.as_str() {
                "string" => client
                    .get::<Option<Vec<u8>>, _>(&k)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
                other => other.as_bytes().to_vec(),
            };
            redis_text.push_str(&String::from_utf8_lossy(&value));
            binaries.push(value);
        }
        let _ = client.quit().await;
    }
    let queue = kiroku_app::redis_pool(&app.config.queue_redis_url)
        .await
        .unwrap();
    use fred::interfaces::StreamsInterface;
    let jobs: Vec<(String, Vec<(String, String)>)> = queue
        .xrange(
            kiroku_jobs::stream_for(&app.config.redis_prefix),
            "-",
            "+",
            None,
        )
        .await
        .unwrap_or_default();
    redis_text.push_str(&format!("{jobs:?}"));
    assert_no_plaintext("Redis", &redis_text);

    // Storage with the app's key: it can read and list nothing.
    let app_store = s3_store(&env(), Role::App);
    let final_key: String =
        sqlx::query_scalar("SELECT object_key FROM artifacts WHERE kind = 'md'")
            .fetch_one(&app_db)
            .await
            .unwrap();
    for prefix in ["ingest/", "work/", "final/v1/", ""] {
        assert!(
            matches!(
                app_store.list(prefix).await,
                Err(StorageError::AccessDenied)
            ),
            "listed {prefix:?}"
        );
    }
    assert!(matches!(
        app_store.get(&final_key, None).await,
        Err(StorageError::AccessDenied)
    ));

    // The app's logs.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    std::fs::remove_file(&log_path).ok();
    assert!(
        logs.contains("recording stopped and queued"),
        "the app's log was not captured"
    );
    assert_no_plaintext("the app's logs", &logs);
    for secret in [password, temp.as_str(), grant["token"].as_str().unwrap()] {
        assert!(!logs.contains(secret), "a secret is in the app's logs");
    }

    // Nothing gathered opens the script: not as a private key, a data key or
    // a key-encryption key. (The ciphertext itself the export service would
    // hand out to the token; here the worker key fetches the same bytes.)
    let worker_store = s3_store(&env(), Role::Worker);
    let rows: Vec<(uuid::Uuid, String, String, Vec<u8>)> =
        sqlx::query_as("SELECT id, kind, object_key, dek_enc FROM artifacts")
            .fetch_all(&app_db)
            .await
            .unwrap();
    let mut artifacts = Vec::new();
    for (id, kind, key, dek_enc) in rows {
        let object = worker_store
            .get(&key, None)
            .await
            .unwrap()
            .into_bytes()
            .await
            .unwrap();
        assert_no_plaintext("the stored ciphertext", &String::from_utf8_lossy(&object));
        artifacts.push((id.to_string(), kind, object, dek_enc));
    }
    let wrapped: Vec<(String, Vec<u8>)> = sqlx::query_as::<_, (uuid::Uuid, Vec<u8>)>(
        "SELECT id, private_key_enc FROM users WHERE private_key_enc IS NOT NULL",
    )
    .fetch_all(&app_db)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, w)| (id.to_string(), w))
    .collect();
    binaries.push(grant["token"].as_str().unwrap().as_bytes().to_vec());
    binaries.extend(
        grant["dek_enc"]
            .as_str()
            .map(|s| kiroku_crypto::b64::decode(s).unwrap()),
    );
    let smallest = artifacts.iter().min_by_key(|a| a.2.len()).unwrap();
    assert_opens_nothing(&binaries, smallest, &wrapped);

    // Only the password opens it.
    let kdf: (Vec<u8>, i32, i32, i32) = sqlx::query_as(
        "SELECT kdf_salt, kdf_m_kib, kdf_t, kdf_p FROM users WHERE username = 'maga'",
    )
    .fetch_one(&app_db)
    .await
    .unwrap();
    let params = kiroku_crypto::kdf::KdfParams {
        m_kib: kdf.1 as u32,
        t: kdf.2 as u32,
        p: kdf.3 as u32,
    };
    let derived = kiroku_crypto::kdf::derive(password, &kdf.0, params).unwrap();
    let pkcs8 = userkey::unwrap(&derived.kek, &user_id, &wrapped[0].1).unwrap();
    let private = userkey::parse_private_key(&pkcs8).unwrap();
    let (id, kind, object, dek_enc) = artifacts.iter().find(|a| a.1 == "md").unwrap();
    let md = envelope::open(&private, id, kind, dek_enc, object).unwrap();
    assert!(String::from_utf8_lossy(&md).contains("bufanda roja"));

    app_db.close().await;
    worker.db.close().await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT object_key FROM artifacts")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for key in keys {
        worker_store.delete(&key).await.unwrap();
    }
    app.stop().await;
}
