//! The insider drill after a scripted recording. A routine is recorded
//! through the app binary (its WebSocket, its photo endpoint) and processed
//! by the workers' jobs on SeaweedFS with a scripted transcriber; then
//! [`kiroku_tests::drill`] looks, with only what the app holds, for the
//! routine and for any key that opens the script. The browser story runs
//! the same drill after a real recording and real recognition.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use kiroku_pipeline::process;
use kiroku_storage::Role;
use kiroku_tests::{Browser, Scripted, TestApp, env, fixture, s3_store, worker_for};
use serde_json::json;
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
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let app_logs = std::fs::read_to_string(&log_path).unwrap();
    std::fs::remove_file(&log_path).ok();
    assert!(
        app_logs.contains("recording stopped and queued"),
        "the app's log was not captured"
    );
    let export_port = kiroku_tests::free_port();
    let _export = kiroku_tests::Service::start(
        "kiroku-export",
        &[],
        &[
            ("KIROKU_STORAGE", "s3".into()),
            ("KIROKU_EXPORT_LISTEN", format!("127.0.0.1:{export_port}")),
            ("KIROKU_PUBLIC_URL", base.clone()),
            ("KIROKU_LOG", "warn".into()),
        ],
    );
    let export_url = format!("http://127.0.0.1:{export_port}");
    kiroku_tests::wait_ready(&format!("{export_url}/readyz"), 30)
        .await
        .expect("export up");
    let mut config = app.config.clone();
    config.database_url = app.db.app_url.clone();
    config.storage = kiroku_tests::s3_config(&env());
    config.export_public_url = export_url;
    let found = kiroku_tests::drill::run(
        &config,
        &kiroku_tests::drill::Drill {
            app_logs,
            sentences: routine(),
            secrets: vec![
                password.to_owned(),
                temp.clone(),
                grant["token"].as_str().unwrap().to_owned(),
            ],
            username: "maga".into(),
            password: password.to_owned(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("insider drill: {e:#}"));
    println!("{found:?}");
    assert_eq!(found.artifacts, 4);

    let worker_store = s3_store(&env(), Role::Worker);
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
