//! `kill -9` of the worker binary in the middle of each job kind, then a
//! restart: the project still ends with exactly one set of artifacts (or,
//! for a deletion, with nothing at all), on real PostgreSQL, Redis,
//! SeaweedFS and the local speech engine.
//!
//! "In the middle" is observed, not guessed: each kill waits for a side
//! effect the job makes part-way (its step recorded, a segment claimed,
//! some of many objects deleted) and then checks that the job had not
//! finished when the worker died.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kiroku_storage::{Role, Store};
use kiroku_tests::pipeline::{count, leftovers, open_all, stopped_recording, webm_of};
use kiroku_tests::{Service, TestApp, env, free_port, s3_store};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The worker binary against the app's database and queue, with a short
/// visibility timeout so that a dead worker's job is taken over quickly.
fn worker(app: &TestApp) -> Service {
    Service::start(
        "kiroku-worker",
        &[],
        &[
            ("KIROKU_STORAGE", "s3".into()),
            ("KIROKU_WORKER_DATABASE_URL", app.db.worker_url.clone()),
            ("KIROKU_REDIS_PREFIX", app.config.redis_prefix.clone()),
            ("KIROKU_WORKER_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("KIROKU_QUEUE_VISIBILITY_SECS", "3".into()),
            ("KIROKU_QUEUE_BACKOFF_SECS", "1".into()),
            ("KIROKU_LOG", "info".into()),
        ],
    )
}

async fn project_state(db: &PgPool, project: Uuid) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, step FROM projects WHERE id = $1")
        .bind(project)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Polls `probe` every 20 ms until it holds, for at most `secs` seconds.
async fn until<F, Fut>(what: &str, secs: u64, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL, as `kill -9` sends it: no cleanup, no goodbye to the queue.
fn kill_9(mut w: Service) {
    w.child.kill().unwrap();
    w.child.wait().unwrap();
}

async fn objects(store: &Store, prefix: &str) -> Vec<String> {
    store.list(prefix).await.unwrap()
}

#[tokio::test]
async fn a_worker_killed_in_each_job_kind_leaves_exactly_one_script() {
    let app = TestApp::start(&[]).await;
    // The worker's role reads the intermediate tables; the app's cannot.
    let db = PgPool::connect(&app.db.worker_url).await.unwrap();
    let (owner, user_id, pair) = app.ready_browser("kim").await;
    let audio = webm_of("routine-es.wav");
    let project = stopped_recording(&app, &user_id, &audio, &[("coffee.jpg", 12_000)]).await;
    let store = s3_store(&env(), Role::Worker);
    let final_prefix = format!("final/v1/{user_id}/{project}/");
    let queue = kiroku_app::redis_pool(&app.config.queue_redis_url)
        .await
        .unwrap();
    let stream = kiroku_jobs::stream_for(&app.config.redis_prefix);
    kiroku_jobs::enqueue_to(
        &queue,
        &stream,
        &kiroku_jobs::Job {
            kind: kiroku_jobs::JobKind::Prepare,
            project_id: project,
        },
    )
    .await
    .unwrap();

    // 1. prepare: killed while decoding, before any segment exists.
    let w = worker(&app);
    until("prepare to start", 60, || async {
        project_state(&db, project).await.1.as_deref() == Some("prepare")
    })
    .await;
    kill_9(w);
    let segments = "SELECT count(*) FROM segments WHERE project_id = $1";
    assert_eq!(
        project_state(&db, project).await.1.as_deref(),
        Some("prepare")
    );
    assert_eq!(
        count(&db, segments, project).await,
        0,
        "prepare had finished"
    );

    // 2. transcribe: killed with a segment claimed and not yet done, after
    // the cutting finished (segments are also transcribed while it goes on).
    let w = worker(&app);
    let working = "SELECT count(*) FROM segments s JOIN projects p ON p.id = s.project_id
                    WHERE s.project_id = $1 AND s.status = 'working' AND p.step = 'transcribe'";
    until("a segment to be claimed", 120, || async {
        count(&db, working, project).await > 0
    })
    .await;
    kill_9(w);
    assert!(
        count(&db, working, project).await > 0,
        "transcribe had finished"
    );
    assert_eq!(
        project_state(&db, project).await.1.as_deref(),
        Some("transcribe")
    );

    // 3. finalize: killed while rendering. A sealed file left by an
    // attempt killed between its uploads is planted beside it: it must not
    // survive as a second copy.
    let w = worker(&app);
    // The last transcription sets the step to finalize with every segment
    // counted done; the finalize job itself resets the count to 0 of 1.
    let finalizing = "SELECT count(*) FROM projects
                       WHERE id = $1 AND step = 'finalize' AND step_done = 0 AND step_total = 1";
    until("finalize to start", 600, || async {
        count(&db, finalizing, project).await == 1
    })
    .await;
    kill_9(w);
    assert_eq!(
        project_state(&db, project).await.0,
        "processing",
        "finalize had finished"
    );
    let orphan = format!("{final_prefix}{}", Uuid::new_v4());
    store
        .put(
            &orphan,
            Bytes::from_static(b"KRK1 half of an earlier attempt"),
        )
        .await
        .unwrap();

    // The restarted worker finishes the project: one set, and nothing else.
    let w = worker(&app);
    until("the project to be ready", 600, || async {
        project_state(&db, project).await.0 == "ready"
    })
    .await;
    let artifacts: Vec<String> =
        sqlx::query_scalar("SELECT object_key FROM artifacts WHERE project_id = $1 ORDER BY 1")
            .bind(project)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(artifacts.len(), 4);
    // The cleanup runs right after the rows are recorded.
    until("the earlier attempt's file to be removed", 30, || async {
        objects(&store, &final_prefix).await.len() == 4
    })
    .await;
    let mut stored = objects(&store, &final_prefix).await;
    stored.sort();
    assert_eq!(stored, artifacts, "exactly the recorded set is stored");
    let files = open_all(&app, project, &pair.private_pkcs8).await;
    let md = files.iter().find(|(k, _)| k == "md").unwrap();
    let md = String::from_utf8_lossy(&md.1).to_lowercase();
    // The real engine's words, allowing for a few recognition errors.
    let heard = [
        "noches", "bufanda", "libreta", "pizarra", "tiza", "treinta", "gracias",
    ]
    .iter()
    .filter(|w| md.contains(*w))
    .count();
    assert!(
        heard >= 4,
        "the real transcript is not in the script:\n{md}"
    );
    assert_eq!(leftovers(&user_id, project).await, Vec::<String>::new());
    for table in ["chunks", "photos", "segments", "transcript_lines"] {
        let sql = format!("SELECT count(*) FROM {table} WHERE project_id = $1");
        assert_eq!(count(&db, &sql, project).await, 0, "{table} rows left");
    }

    // 4. delete_project: killed part-way through many objects (a long
    // recording's worth is planted in the work area).
    let planted = 150;
    for i in 0..planted {
        store
            .put(
                &format!("work/{project}/bulk/{i:04}"),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
    }
    let work_prefix = format!("work/{project}/");
    let resp = owner
        .post_json("/api/project/delete", &json!({ "project_id": project }))
        .await;
    assert_eq!(resp.status(), 200);
    until("the deletion to start", 60, || async {
        objects(&store, &work_prefix).await.len() < planted
    })
    .await;
    kill_9(w);
    assert!(
        !objects(&store, &work_prefix).await.is_empty()
            || !objects(&store, &final_prefix).await.is_empty(),
        "the deletion had finished"
    );
    assert_eq!(project_state(&db, project).await.0, "deleting");

    let w = worker(&app);
    until("the project to be deleted", 120, || async {
        project_state(&db, project).await.0 == "deleted"
    })
    .await;
    for prefix in [
        format!("ingest/{user_id}/{project}/"),
        work_prefix.clone(),
        final_prefix.clone(),
    ] {
        assert_eq!(
            objects(&store, &prefix).await,
            Vec::<String>::new(),
            "{prefix}"
        );
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM artifacts WHERE project_id = $1",
            project
        )
        .await,
        0
    );
    w.stop();
    app.stop().await;
}
