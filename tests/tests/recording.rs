//! Recording against the real app, PostgreSQL, Redis and SeaweedFS: chunks
//! over the WebSocket, photos, stop; and every kind of bad input.

use futures_util::{SinkExt, StreamExt};
use kiroku_storage::Role;
use kiroku_tests::{Browser, TestApp, env, fixture, s3_store};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn start(b: &Browser, title: &str) -> (u16, Value) {
    let resp = b
        .post_json(
            "/api/project/start",
            &json!({ "title": title, "participant": "Ana", "language": "es", "audio_type": "audio/webm;codecs=opus" }),
        )
        .await;
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

async fn connect(b: &Browser, project: &str, origin: &str) -> Result<Socket, u16> {
    let url = format!(
        "{}/ws/audio?project={project}",
        b.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    let cookie = format!("kiroku_session={}", b.session_cookie().unwrap_or_default());
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req.headers_mut().insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((s, _)) => Ok(s),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

fn frame(seq: u32, audio: &[u8]) -> Message {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(audio);
    Message::Binary(v.into())
}

async fn next_json(s: &mut Socket) -> Value {
    loop {
        match s.next().await.expect("socket open").expect("no error") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn close_code(s: &mut Socket) -> Option<CloseCode> {
    while let Some(msg) = s.next().await {
        match msg {
            Ok(Message::Close(f)) => return f.map(|f| f.code),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

async fn stop(b: &Browser, project: &str, last_seq: i64) -> (u16, Value) {
    let resp = b
        .post_json(
            "/api/project/stop",
            &json!({ "project_id": project, "last_seq": last_seq, "duration_ms": 25_000 }),
        )
        .await;
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn chunks_are_acknowledged_once_stored_and_stop_queues_processing() {
    let app = TestApp::start(&[]).await;
    let (b, user_id, _) = app.ready_browser("rita").await;
    let (status, started) = start(&b, "Rutina de prueba").await;
    assert_eq!(status, 200, "{started}");
    let project = started["project_id"].as_str().unwrap().to_owned();
    assert_eq!(started["chunk_seconds"], 10);

    let mut ws = connect(&b, &project, &app.base).await.unwrap();
    // Out of order and with a duplicate whose bytes differ.
    for (seq, audio) in [
        (0u32, &b"first-0"[..]),
        (2, b"third-2"),
        (1, b"second-1"),
        (1, b"EVIL-1"),
    ] {
        ws.send(frame(seq, audio)).await.unwrap();
        assert_eq!(next_json(&mut ws).await, json!({ "ack": seq }));
    }
    // Stop before the last chunk arrives: told exactly what is missing.
    let (status, body) = stop(&b, &project, 3).await;
    assert_eq!(status, 409);
    assert_eq!(body["missing"], json!([3]));
    ws.send(frame(3, b"fourth-3")).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({ "ack": 3 }));
    let (status, body) = stop(&b, &project, 3).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "queued");
    // A repeated stop is harmless.
    assert_eq!(stop(&b, &project, 3).await.0, 200);
    // After stop, the socket refuses more audio.
    ws.send(frame(4, b"late")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"], "stopped");

    let worker = s3_store(&env(), Role::Worker);
    let prefix = format!("ingest/{user_id}/{project}/chunks/");
    let keys = worker.list(&prefix).await.unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    let second = worker
        .get(&format!("{prefix}000001"), None)
        .await
        .unwrap()
        .into_bytes()
        .await
        .unwrap();
    assert_eq!(second, b"second-1", "a duplicate overwrote a stored chunk");

    // The job carries the project id and nothing else.
    let queue = kiroku_app::redis_pool(app.config.queue_redis_url.as_str())
        .await
        .unwrap();
    use fred::interfaces::StreamsInterface;
    let entries: Vec<(String, Vec<(String, String)>)> = queue
        .xrevrange(
            kiroku_jobs::stream_for(&app.config.redis_prefix),
            "+",
            "-",
            Some(200),
        )
        .await
        .unwrap();
    let job = entries
        .iter()
        .filter_map(|(_, f)| kiroku_jobs::from_fields(f).ok())
        .find(|j| j.project_id.to_string() == project)
        .expect("a prepare job for the project");
    assert_eq!(job.kind, kiroku_jobs::JobKind::Prepare);
    for k in keys {
        worker.delete(&k).await.unwrap();
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_frames_close_the_socket_with_a_clear_code() {
    let app = TestApp::start(&[
        ("KIROKU_MAX_CHUNK_BYTES", "1024"),
        ("KIROKU_WS_IDLE_SECS", "1"),
    ])
    .await;
    let (b, _, _) = app.ready_browser("sara").await;
    let project = start(&b, "Marcos").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut ws = connect(&b, &project, &app.base).await.unwrap();
    ws.send(Message::Text("hola".into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Unsupported));

    let mut ws = connect(&b, &project, &app.base).await.unwrap();
    ws.send(frame(0, &vec![0u8; 4096])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));

    let mut ws = connect(&b, &project, &app.base).await.unwrap();
    ws.send(Message::Binary(vec![0u8, 0].into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));

    // A client that never sends is let go.
    let mut ws = connect(&b, &project, &app.base).await.unwrap();
    let code = tokio::time::timeout(std::time::Duration::from_secs(10), close_code(&mut ws)).await;
    assert_eq!(code.expect("idle socket closed"), Some(CloseCode::Policy));

    // Nothing was stored by any of it.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_recording_beyond_the_maximum_length_is_refused() {
    let app = TestApp::start(&[("KIROKU_MAX_RECORDING_MINUTES", "1")]).await;
    let (b, _, _) = app.ready_browser("teo").await;
    let project = start(&b, "Larga").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = connect(&b, &project, &app.base).await.unwrap();
    ws.send(frame(7, b"ok")).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({ "ack": 7 }));
    ws.send(frame(8, b"too far")).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"], "too_long");
    app.stop().await;
}

#[tokio::test]
async fn sockets_for_unknown_foreign_or_stopped_projects_or_other_origins_are_refused() {
    let app = TestApp::start(&[]).await;
    let (owner, _, _) = app.ready_browser("uma").await;
    let (other, _, _) = app.ready_browser("vito").await;
    let project = start(&owner, "Secreta").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(
        connect(&owner, &uuid::Uuid::new_v4().to_string(), &app.base)
            .await
            .err(),
        Some(404)
    );
    assert_eq!(connect(&other, &project, &app.base).await.err(), Some(404));
    assert_eq!(
        connect(&owner, &project, "http://evil.example").await.err(),
        Some(403)
    );
    let anonymous = Browser::new(&app.base);
    assert_eq!(
        connect(&anonymous, &project, &app.base).await.err(),
        Some(401)
    );
    // Stopping someone else's project looks like a missing one.
    assert_eq!(stop(&other, &project, 0).await.0, 404);

    let mut ws = connect(&owner, &project, &app.base).await.unwrap();
    ws.send(frame(0, b"only")).await.unwrap();
    next_json(&mut ws).await;
    assert_eq!(stop(&owner, &project, 0).await.0, 200);
    assert_eq!(connect(&owner, &project, &app.base).await.err(), Some(409));
    drop(ws);
    app.stop().await;
}

async fn post_photo(
    b: &Browser,
    project: &str,
    photo_id: &str,
    offset: i64,
    body: Vec<u8>,
) -> (u16, Value) {
    let resp = b
        .http
        .post(format!(
            "{}/api/photo?project_id={project}&photo_id={photo_id}&offset_ms={offset}",
            b.base
        ))
        .header("x-csrf-token", &b.csrf)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn photos_are_checked_by_content_and_time() {
    let app = TestApp::start(&[("KIROKU_MAX_PHOTO_BYTES", "200000")]).await;
    let (b, user_id, _) = app.ready_browser("wen").await;
    let project = start(&b, "Fotos").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let jpeg = std::fs::read(fixture("photos/chelsea.jpg")).unwrap();
    let id = uuid::Uuid::new_v4().to_string();

    assert_eq!(post_photo(&b, &project, &id, 0, jpeg.clone()).await.0, 200);
    // A retry of the same photo is accepted and stores nothing new.
    assert_eq!(post_photo(&b, &project, &id, 0, jpeg.clone()).await.0, 200);

    let other = || uuid::Uuid::new_v4().to_string();
    let (status, body) =
        post_photo(&b, &project, &other(), 0, b"<svg onload=alert(1)>".to_vec()).await;
    assert_eq!(status, 415);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("JPEG, PNG or WebP")
    );
    let heic = [&b"\0\0\0\x18ftypheic"[..], &[0u8; 64]].concat();
    let (status, body) = post_photo(&b, &project, &other(), 0, heic).await;
    assert_eq!(status, 415);
    assert!(body["error"].as_str().unwrap().contains("HEIC"));
    assert_eq!(
        post_photo(&b, &project, &other(), -1, jpeg.clone()).await.0,
        400
    );
    assert_eq!(
        post_photo(&b, &project, &other(), 3_600_000, jpeg.clone())
            .await
            .0,
        400
    );
    let big = [jpeg.clone(), vec![0u8; 300_000]].concat();
    assert_eq!(post_photo(&b, &project, &other(), 0, big).await.0, 413);
    let mut no_csrf = b.http.post(format!(
        "{}/api/photo?project_id={project}&photo_id={}&offset_ms=0",
        b.base,
        other()
    ));
    no_csrf = no_csrf.body(jpeg.clone());
    assert_eq!(no_csrf.send().await.unwrap().status(), 403);

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM photos")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let worker = s3_store(&env(), Role::Worker);
    let key = format!("ingest/{user_id}/{project}/photos/{id}");
    assert_eq!(
        worker
            .get(&key, None)
            .await
            .unwrap()
            .into_bytes()
            .await
            .unwrap(),
        jpeg
    );
    worker.delete(&key).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_discarded_recording_is_deleted_by_a_worker_and_leaves_nothing() {
    let app = TestApp::start(&[]).await;
    let (b, user_id, _) = app.ready_browser("dora").await;
    let project = start(&b, "Descartada").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = connect(&b, &project, &app.base).await.unwrap();
    for seq in 0..2u32 {
        ws.send(frame(seq, b"audio")).await.unwrap();
        assert_eq!(next_json(&mut ws).await, json!({ "ack": seq }));
    }
    let resp = b
        .post_json("/api/project/discard", &json!({ "project_id": project }))
        .await;
    assert_eq!(resp.status(), 200);
    // Twice is not found: it is no longer recording.
    let again = b
        .post_json("/api/project/discard", &json!({ "project_id": project }))
        .await;
    assert_eq!(again.status(), 404);
    // No more audio is taken for it.
    ws.send(frame(2, b"late")).await.unwrap();
    assert!(next_json(&mut ws).await["error"].is_string());

    // The deletion job is queued; a worker runs it.
    let id: uuid::Uuid = project.parse().unwrap();
    let queue = kiroku_app::redis_pool(&app.config.queue_redis_url)
        .await
        .unwrap();
    let stream = kiroku_jobs::stream_for(&app.config.redis_prefix);
    let jobs: Vec<(String, std::collections::HashMap<String, String>)> =
        fred::interfaces::StreamsInterface::xrange(&queue, &stream, "-", "+", None)
            .await
            .unwrap();
    assert!(
        jobs.iter()
            .any(|(_, f)| f.values().any(|v| v == "delete_project")
                && f.values().any(|v| *v == project)),
        "no delete_project job for it: {jobs:?}"
    );
    let worker = kiroku_tests::worker_for(&app, None).await;
    kiroku_pipeline::cleanup::delete_project(&worker, id)
        .await
        .unwrap();
    let store = s3_store(&env(), Role::Worker);
    assert_eq!(
        store
            .list(&format!("ingest/{user_id}/{project}/"))
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    let (status, chunks): (String, i64) = sqlx::query_as(
        "SELECT status, (SELECT count(*) FROM chunks WHERE project_id = $1) FROM projects WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&worker.db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), chunks), ("deleted", 0));
    app.stop().await;
}

#[tokio::test]
async fn start_enforces_the_concurrent_limit_and_checks_its_fields() {
    let app = TestApp::start(&[("KIROKU_MAX_CONCURRENT_RECORDINGS", "2")]).await;
    let (b, _, _) = app.ready_browser("xavi").await;
    assert_eq!(start(&b, "Uno").await.0, 200);
    let second = start(&b, "Dos").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = start(&b, "Tres").await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("in progress"));
    // Discarding one frees a place.
    let resp = b
        .post_json("/api/project/discard", &json!({ "project_id": second }))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(start(&b, "Tres").await.0, 200);

    for bad in [
        json!({ "title": "", "audio_type": "audio/webm" }),
        json!({ "title": "x".repeat(201), "audio_type": "audio/webm" }),
        json!({ "title": "ok", "audio_type": "video/avi" }),
        json!({ "title": "ok", "audio_type": "audio/webm", "language": "fr" }),
        json!({ "title": "a\u{0}b", "audio_type": "audio/webm" }),
        json!({ "title": "ok", "audio_type": "audio/webm", "path": "/etc/passwd" }),
    ] {
        assert_eq!(
            b.post_json("/api/project/start", &bad).await.status(),
            400,
            "{bad}"
        );
    }
    let anonymous = Browser::new(&app.base);
    let mut anon = anonymous;
    anon.open_login().await;
    assert_eq!(start(&anon, "x").await.0, 401);
    app.stop().await;
}

/// A project row of `user` in `status`, as `start` would make it.
async fn project_in(app: &TestApp, user: uuid::Uuid, status: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO projects (id, user_id, title, participant, language, stylize, audio_type)
         VALUES ($1, $2, 'Ledger', '', 'es', false, 'audio/webm')",
    )
    .bind(id)
    .bind(user)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE projects SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(&app.pool)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn the_chunk_ledger_answers_each_chunk_of_a_batch_for_itself() {
    use kiroku_app::ledger::{ChunkLedger, ChunkRow, ChunkState};
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("lea").await;
    let user: uuid::Uuid = user_id.parse().unwrap();
    let recording = project_in(&app, user, "recording").await;
    let stopped = project_in(&app, user, "queued").await;
    let ledger = ChunkLedger::start(app.pool.clone());
    let row = |project, seq: i32, tag: &str| ChunkRow {
        project,
        seq,
        size: 10,
        key: format!("ingest/{user}/{project}/chunks/{seq:06}{tag}"),
    };

    // 100 rows, resends of the first half racing their originals, and rows
    // that break a constraint (an unknown project, an empty chunk), all at
    // once so that they share batches.
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..100 {
        let (l, r) = (ledger.clone(), row(recording, seq, ""));
        tasks.spawn(async move { (true, l.record(r).await.is_ok()) });
        if seq < 50 {
            let (l, r) = (ledger.clone(), row(recording, seq, "-again"));
            tasks.spawn(async move { (true, l.record(r).await.is_ok()) });
        }
        if seq % 10 == 0 {
            let (l, r) = (ledger.clone(), row(uuid::Uuid::new_v4(), seq, ""));
            tasks.spawn(async move { (false, l.record(r).await.is_ok()) });
            let (l, mut r) = (ledger.clone(), row(recording, 1000 + seq, ""));
            r.size = 0;
            tasks.spawn(async move { (false, l.record(r).await.is_ok()) });
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (should, did) = done.unwrap();
        assert_eq!(should, did, "a row was answered for another row's fate");
    }
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT seq, object_key FROM chunks WHERE project_id = $1 ORDER BY seq")
            .bind(recording)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 100, "one row per chunk, resends included");
    assert!(
        rows.iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as i32)
    );

    // Questions about different chunks and projects, and one about a
    // project by someone who does not own it, all at once.
    let stranger = uuid::Uuid::new_v4();
    let asked = [
        (user, recording, 7, Some("recording"), true),
        (user, recording, 100, Some("recording"), false),
        (user, stopped, 0, Some("queued"), false),
        (user, stranger, 0, None, false),
        (stranger, recording, 7, None, false),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..25 {
        for (i, (owner, project, seq, _, _)) in asked.iter().enumerate() {
            let (l, owner, project, seq) = (ledger.clone(), *owner, *project, *seq);
            tasks.spawn(async move { (round, i, l.check(owner, project, seq).await.unwrap()) });
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (_, i, state) = done.unwrap();
        let (_, _, _, status, stored) = asked[i];
        assert_eq!(
            state,
            ChunkState {
                project_status: status.map(str::to_owned),
                stored,
            },
            "question {i}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn where_a_recording_stands_is_told_only_to_its_owner() {
    let app = TestApp::start(&[]).await;
    let (mut owner, _, _) = app.ready_browser("ines").await;
    let (mut other, _, _) = app.ready_browser("otto").await;
    let project = start(&owner, "Camerino").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/project/{project}/recording");
    async fn state(b: &mut Browser, path: &str) -> (u16, Value) {
        let resp = b.page(path).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }

    assert_eq!(
        state(&mut owner, &path).await,
        (
            200,
            json!({ "status": "recording", "chunks_stored": 0, "last_stored_seq": null, "quiet_secs": null })
        )
    );
    let mut ws = connect(&owner, &project, &app.base).await.unwrap();
    for seq in [0u32, 2] {
        ws.send(frame(seq, b"audio")).await.unwrap();
        next_json(&mut ws).await;
    }
    let answer = state(&mut owner, &path).await.1;
    assert_eq!(
        (
            &answer["status"],
            &answer["chunks_stored"],
            &answer["last_stored_seq"]
        ),
        (&json!("recording"), &json!(2), &json!(2))
    );
    // Audio arrived just now: a page offering to finish it can warn that
    // it may still be recording elsewhere.
    assert!(
        answer["quiet_secs"]
            .as_i64()
            .is_some_and(|q| (0..60).contains(&q)),
        "{answer}"
    );

    // The recording page lists it as still open, to its owner only.
    let listed = format!("href=\"/projects/{project}\"");
    assert!(
        owner
            .page("/record")
            .await
            .text()
            .await
            .unwrap()
            .contains(&listed)
    );
    assert!(
        !other
            .page("/record")
            .await
            .text()
            .await
            .unwrap()
            .contains(&listed)
    );

    // Nobody else learns anything, not even that it exists.
    assert_eq!(state(&mut other, &path).await.0, 404);
    let mut anonymous = Browser::new(&app.base);
    assert_eq!(state(&mut anonymous, &path).await.0, 401);
    let unknown = format!("/api/project/{}/recording", uuid::Uuid::new_v4());
    assert_eq!(state(&mut owner, &unknown).await.0, 404);
    for bad in ["not-a-uuid", "%00", "..%2f..%2fadmin", &"9".repeat(5000)] {
        let status = state(&mut owner, &format!("/api/project/{bad}/recording"))
            .await
            .0;
        assert!(
            status == 400 || status == 404 || status == 414,
            "{bad}: {status}"
        );
    }

    // Once stopped, it says so; once discarded, it is gone.
    ws.send(frame(1, b"audio")).await.unwrap();
    next_json(&mut ws).await;
    assert_eq!(stop(&owner, &project, 2).await.0, 200);
    assert_eq!(state(&mut owner, &path).await.1["status"], "queued");
    assert!(
        !owner
            .page("/record")
            .await
            .text()
            .await
            .unwrap()
            .contains(&listed)
    );
    let second = start(&owner, "Otra").await.1["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let discarded = owner
        .post_json("/api/project/discard", &json!({ "project_id": second }))
        .await;
    assert_eq!(discarded.status(), 200);
    // Its owner is told, so that a browser can forget what it kept of it;
    // nobody else learns even that.
    let second_path = format!("/api/project/{second}/recording");
    assert_eq!(
        state(&mut owner, &second_path).await.1["status"],
        "deleting"
    );
    assert_eq!(state(&mut other, &second_path).await.0, 404);
    drop(ws);
    app.stop().await;
}
