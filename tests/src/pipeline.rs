//! A stopped recording as the app leaves it, and what the pipeline leaves
//! behind: shared by the pipeline, crash and insider tests.

use bytes::Bytes;
use kiroku_crypto::{envelope, userkey};
use kiroku_storage::Role;
use uuid::Uuid;

use crate::{TestApp, env, fixture, s3_store};

/// WebM/Opus of a fixture, as a browser would record it.
pub fn webm_of(wav: &str) -> Vec<u8> {
    encode_webm(wav, None)
}

/// A fixture played in a loop for `seconds`, as WebM/Opus at the island's
/// bitrate: a recording of any length.
pub fn looped_webm(wav: &str, seconds: u32) -> Vec<u8> {
    encode_webm(wav, Some(seconds))
}

fn encode_webm(wav: &str, looped_seconds: Option<u32>) -> Vec<u8> {
    let out = std::env::temp_dir().join(format!("kiroku-{}.webm", Uuid::new_v4()));
    let mut ffmpeg = std::process::Command::new("ffmpeg");
    ffmpeg.args(["-v", "error", "-y"]);
    if looped_seconds.is_some() {
        ffmpeg.args(["-stream_loop", "-1"]);
    }
    ffmpeg.arg("-i").arg(fixture(wav));
    if let Some(secs) = looped_seconds {
        ffmpeg.args(["-t", &secs.to_string()]);
    }
    let status = ffmpeg
        .args(["-c:a", "libopus", "-b:a", "32k", "-f", "webm"])
        .arg(&out)
        .status()
        .expect("ffmpeg");
    assert!(status.success(), "ffmpeg could not encode {wav}");
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).ok();
    bytes
}

/// A stopped recording as the app leaves it: chunks and photos in ingest,
/// their rows, and the project queued.
pub async fn stopped_recording(
    app: &TestApp,
    user_id: &str,
    audio: &[u8],
    photos: &[(&str, i64)],
) -> Uuid {
    stopped_recording_of(app, user_id, audio, 4, 53_000, photos).await
}

/// [`stopped_recording`] with `audio` cut into `chunks` pieces and the
/// recorded duration given.
pub async fn stopped_recording_of(
    app: &TestApp,
    user_id: &str,
    audio: &[u8],
    chunks: usize,
    duration_ms: i64,
    photos: &[(&str, i64)],
) -> Uuid {
    let user: Uuid = user_id.parse().unwrap();
    let project = Uuid::new_v4();
    let chunks: Vec<&[u8]> = audio.chunks(audio.len().div_ceil(chunks.max(1))).collect();
    sqlx::query(
        "INSERT INTO projects (id, user_id, title, participant, language, status, last_seq, duration_ms)
         VALUES ($1, $2, 'La carta #1', 'Ana', 'es', 'queued', $3, $4)",
    )
    .bind(project)
    .bind(user)
    .bind(chunks.len() as i32 - 1)
    .bind(duration_ms)
    .execute(&app.pool)
    .await
    .unwrap();
    let store = s3_store(&env(), Role::App);
    for (seq, c) in chunks.iter().enumerate() {
        let key = format!("ingest/{user}/{project}/chunks/{seq:06}");
        store.put(&key, Bytes::copy_from_slice(c)).await.unwrap();
        sqlx::query(
            "INSERT INTO chunks (project_id, seq, size, object_key) VALUES ($1, $2, $3, $4)",
        )
        .bind(project)
        .bind(seq as i32)
        .bind(c.len() as i32)
        .bind(&key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    for (name, offset) in photos {
        let id = Uuid::new_v4();
        let key = format!("ingest/{user}/{project}/photos/{id}");
        let bytes = std::fs::read(fixture(&format!("photos/{name}"))).unwrap();
        store.put(&key, Bytes::from(bytes.clone())).await.unwrap();
        sqlx::query(
            "INSERT INTO photos (id, project_id, offset_ms, content_type, size, object_key)
             VALUES ($1, $2, $3, 'image/jpeg', $4, $5)",
        )
        .bind(id)
        .bind(project)
        .bind(offset)
        .bind(bytes.len() as i32)
        .bind(&key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    project
}

/// Every artifact of the project, opened with the owner's private key.
pub async fn open_all(app: &TestApp, project: Uuid, pkcs8: &[u8]) -> Vec<(String, Vec<u8>)> {
    let private = userkey::parse_private_key(pkcs8).unwrap();
    let rows: Vec<(Uuid, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, kind, object_key, dek_enc FROM artifacts WHERE project_id = $1 ORDER BY kind",
    )
    .bind(project)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let store = s3_store(&env(), Role::Export);
    let mut out = Vec::new();
    for (id, kind, key, dek_enc) in rows {
        let object = store
            .get(&key, None)
            .await
            .unwrap()
            .into_bytes()
            .await
            .unwrap();
        let plain = envelope::open(&private, &id.to_string(), &kind, &dek_enc, &object).unwrap();
        out.push((kind, plain.to_vec()));
    }
    out
}

/// The single number `sql` answers for `project`, its only parameter (a
/// `count(*)` of some rows of the project, usually).
pub async fn count(db: &sqlx::PgPool, sql: &str, project: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(project)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Objects of the project left in the ingest and work areas.
pub async fn leftovers(user_id: &str, project: Uuid) -> Vec<String> {
    let store = s3_store(&env(), Role::Worker);
    let mut keys = store
        .list(&format!("ingest/{user_id}/{project}/"))
        .await
        .unwrap();
    keys.extend(store.list(&format!("work/{project}/")).await.unwrap());
    keys
}

/// Runs the job chain the way the queue would, one job at a time.
pub async fn run_pipeline(worker: &kiroku_pipeline::WorkerState, project: Uuid) {
    use kiroku_pipeline::process;
    process::prepare(worker, project).await.expect("prepare");
    let segments: i64 = sqlx::query_scalar("SELECT count(*) FROM segments WHERE project_id = $1")
        .bind(project)
        .fetch_one(&worker.db)
        .await
        .unwrap();
    assert!(segments >= 1);
    for _ in 0..segments {
        process::transcribe(worker, project)
            .await
            .expect("transcribe");
    }
    process::finalize(worker, project).await.expect("finalize");
}
