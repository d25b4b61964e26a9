//! Recording: projects start, audio chunks arrive over a WebSocket, photos
//! over plain POSTs, and `stop` queues processing once nothing is missing.
//!
//! Everything lands in the ingest area through the app's put-only
//! credential; the database records what arrived. A chunk is acknowledged
//! only after both are durable, and a repeated chunk is acknowledged
//! without being written again, so retries can never corrupt what is
//! stored.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kiroku_jobs::{Job, JobKind};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;
use uuid::Uuid;

use crate::error::AppError;
use crate::session::{self, ApiJson, SessionUser};
use crate::web::AppState;

/// Seconds of audio in one chunk (the recorder's timeslice).
pub const CHUNK_SECONDS: i64 = 10;

pub fn routes(max_photo_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/api/project/start", post(start))
        .route("/api/project/stop", post(stop))
        .route("/api/project/discard", post(discard))
        .route(
            "/api/photo",
            post(photo).layer(DefaultBodyLimit::max(max_photo_bytes)),
        )
        .route("/ws/audio", get(audio_socket))
        .route("/api/project/{id}/recording", get(recording_state))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    title: String,
    #[serde(default)]
    participant: String,
    #[serde(default = "auto")]
    language: String,
    #[serde(default)]
    stylize: bool,
    audio_type: String,
}

fn auto() -> String {
    "auto".into()
}

#[derive(Serialize)]
pub struct StartResponse {
    project_id: Uuid,
    chunk_seconds: i64,
    max_chunk_bytes: usize,
    max_photo_bytes: usize,
    max_seconds: i64,
}

/// `audio/webm;codecs=opus` → `audio/webm`, if it is a type we decode.
pub fn base_audio_type(t: &str) -> Option<&'static str> {
    let base = t
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ["audio/webm", "audio/mp4", "audio/ogg"]
        .into_iter()
        .find(|k| *k == base)
}

fn clean_text(field: &str, value: &str, min: usize, max: usize) -> Result<String, AppError> {
    let v = value.trim();
    let n = v.chars().count();
    if n < min || n > max || v.chars().any(|c| c.is_control()) {
        return Err(AppError::BadRequest(format!(
            "{field} must be {min}–{max} characters of text"
        )));
    }
    Ok(v.to_owned())
}

async fn start(
    State(s): State<AppState>,
    session: Session,
    ApiJson(req): ApiJson<StartRequest>,
) -> Result<Json<StartResponse>, AppError> {
    let user = session::ready_user(&session).await?;
    let title = clean_text("title", &req.title, 1, 200)?;
    let participant = clean_text("participant", &req.participant, 0, 200)?;
    if !["auto", "es", "en"].contains(&req.language.as_str()) {
        return Err(AppError::BadRequest(
            "language must be auto, es or en".into(),
        ));
    }
    let audio_type = base_audio_type(&req.audio_type).ok_or_else(|| {
        AppError::BadRequest("audio type must be audio/webm, audio/mp4 or audio/ogg".into())
    })?;
    let limits = &s.config.limits;
    let mut tx = s.db.begin().await?;
    // Serialise concurrent starts of one user so the limit holds.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1::text))")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projects WHERE user_id = $1 AND status = 'recording'",
    )
    .bind(user.id)
    .fetch_one(&mut *tx)
    .await?;
    if open >= limits.max_concurrent_recordings {
        return Err(AppError::Conflict(format!(
            "you already have {open} recordings in progress; stop or discard one first"
        )));
    }
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO projects (id, user_id, title, participant, language, stylize, audio_type)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(user.id)
    .bind(&title)
    .bind(&participant)
    .bind(&req.language)
    .bind(req.stylize)
    .bind(audio_type)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, project_id = %id, "recording started");
    Ok(Json(StartResponse {
        project_id: id,
        chunk_seconds: CHUNK_SECONDS,
        max_chunk_bytes: limits.max_chunk_bytes,
        max_photo_bytes: limits.max_photo_bytes,
        max_seconds: limits.max_recording_secs,
    }))
}

/// A project of `user`, with what recording needs to know.
#[derive(sqlx::FromRow)]
struct ProjectState {
    status: String,
    last_seq: Option<i32>,
    elapsed_ms: i64,
}

async fn project_of(s: &AppState, user: &SessionUser, id: Uuid) -> Result<ProjectState, AppError> {
    sqlx::query_as(
        "SELECT status, last_seq,
                (extract(epoch FROM now() - created_at) * 1000)::bigint AS elapsed_ms
           FROM projects WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&s.db)
    .await?
    // Someone else's project looks exactly like a missing one.
    .ok_or(AppError::NotFound)
}

/// Where a recording stands on the server, for a page that lost it (a
/// reload, a browser that was closed): the island compares it with the
/// chunks and photos still waiting in its IndexedDB.
async fn recording_state(
    State(s): State<AppState>,
    session: Session,
    axum::extract::Path(id): axum::extract::Path<Uuid>,
) -> Result<Json<serde_json::Value>, AppError> {
    let user = session::ready_user(&session).await?;
    // The owner learns even that it is being deleted, so that the browser
    // can forget what it kept of it; anyone else gets a plain 404.
    let project = project_of(&s, &user, id).await?;
    let (stored, last_stored, quiet_secs): (i64, Option<i32>, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(seq),
                extract(epoch FROM now() - max(received_at))::bigint
           FROM chunks WHERE project_id = $1",
    )
    .bind(id)
    .fetch_one(&s.db)
    .await?;
    Ok(Json(serde_json::json!({
        "status": project.status,
        "chunks_stored": stored,
        "last_stored_seq": last_stored,
        // Seconds since the last chunk arrived: a recording still being
        // made elsewhere says so here.
        "quiet_secs": quiet_secs,
    })))
}

fn chunk_key(user: Uuid, project: Uuid, seq: u32) -> String {
    format!("ingest/{user}/{project}/chunks/{seq:06}")
}

#[derive(Deserialize)]
pub struct SocketQuery {
    project: Uuid,
}

/// Close codes the island understands.
mod close {
    pub const UNSUPPORTED: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVER_ERROR: u16 = 1011;
}

async fn audio_socket(
    State(s): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<SocketQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, AppError> {
    let user = session::ready_user(&session).await?;
    // Browsers always send Origin on WebSockets; cookies ride along from
    // any site, so only our own pages may open this socket.
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    if origin != Some(s.config.origin()) {
        return Err(AppError::Forbidden);
    }
    let project = project_of(&s, &user, q.project).await?;
    if project.status != "recording" {
        return Err(AppError::Conflict(
            "this recording is already stopped".into(),
        ));
    }
    let max = s.config.limits.max_chunk_bytes;
    Ok(ws
        .max_message_size(max + 4)
        .max_frame_size(max + 4)
        .on_upgrade(move |socket| receive_chunks(s, user, q.project, socket)))
}

async fn send_json(socket: &mut WebSocket, value: serde_json::Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

async fn close_with(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// One connection's life: binary frames of `seq (u32, big endian) || bytes`,
/// each answered `{"ack": seq}` once durable.
async fn receive_chunks(s: AppState, user: SessionUser, project: Uuid, mut socket: WebSocket) {
    let idle = Duration::from_secs(s.config.limits.ws_idle_secs);
    let max_seq = (s.config.limits.max_recording_secs / CHUNK_SECONDS + 1) as u32;
    loop {
        let msg = match tokio::time::timeout(idle, socket.recv()).await {
            Err(_) => return close_with(socket, close::POLICY, "idle").await,
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::info!(project_id = %project, error = %e, "audio socket error");
                return close_with(socket, close::TOO_BIG, "frame too large or malformed").await;
            }
            Ok(Some(Ok(m))) => m,
        };
        let data = match msg {
            Message::Binary(b) => b,
            Message::Text(_) => {
                return close_with(socket, close::UNSUPPORTED, "binary frames only").await;
            }
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if data.len() < 5 {
            return close_with(
                socket,
                close::POLICY,
                "frame needs a sequence number and audio",
            )
            .await;
        }
        let seq = u32::from_be_bytes(data[..4].try_into().expect("length checked"));
        if seq > max_seq {
            let _ = send_json(
                &mut socket,
                serde_json::json!({ "error": "too_long", "seq": seq }),
            )
            .await;
            return close_with(socket, close::POLICY, "recording too long").await;
        }
        match store_chunk(&s, &user, project, seq, data.slice(4..)).await {
            Ok(()) => {
                if !send_json(&mut socket, serde_json::json!({ "ack": seq })).await {
                    return;
                }
            }
            Err(AppError::Conflict(_)) => {
                let _ = send_json(
                    &mut socket,
                    serde_json::json!({ "error": "stopped", "seq": seq }),
                )
                .await;
                return close_with(socket, close::POLICY, "recording stopped").await;
            }
            Err(e) => {
                tracing::error!(project_id = %project, seq, error = %e, "chunk not stored");
                return close_with(socket, close::SERVER_ERROR, "could not store the chunk").await;
            }
        }
    }
}

async fn store_chunk(
    s: &AppState,
    user: &SessionUser,
    project: Uuid,
    seq: u32,
    audio: Bytes,
) -> Result<(), AppError> {
    // Both questions at once (batched with other chunks' by the ledger): is
    // the project still recording, and is this chunk already stored?
    let state = s.chunks.check(user.id, project, seq as i32).await?;
    match state.project_status.as_deref() {
        None => return Err(AppError::NotFound),
        Some("recording") => {}
        Some(_) => return Err(AppError::Conflict("stopped".into())),
    }
    if state.stored {
        return Ok(()); // a resend: already durable, never overwritten
    }
    let key = chunk_key(user.id, project, seq);
    let size = audio.len() as i32;
    s.ingest.put(&key, audio).await?;
    s.chunks
        .record(crate::ledger::ChunkRow {
            project,
            seq: seq as i32,
            size,
            key,
        })
        .await
}

/// What a photo's first bytes say it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Image(&'static str),
    Heic,
    Unknown,
}

pub fn sniff_image(b: &[u8]) -> Sniffed {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Sniffed::Image("image/jpeg");
    }
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Sniffed::Image("image/png");
    }
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        return Sniffed::Image("image/webp");
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        let brand = &b[8..12];
        if [
            b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif",
        ]
        .iter()
        .any(|h| brand == *h)
        {
            return Sniffed::Heic;
        }
    }
    Sniffed::Unknown
}

#[derive(Deserialize)]
pub struct PhotoQuery {
    project_id: Uuid,
    photo_id: Uuid,
    offset_ms: i64,
}

async fn photo(
    State(s): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<PhotoQuery>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, AppError> {
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    session::check_csrf(&session, presented).await?;
    let user = session::ready_user(&session).await?;
    let project = project_of(&s, &user, q.project_id).await?;
    if project.status != "recording" {
        return Err(AppError::Conflict(
            "this recording is already stopped".into(),
        ));
    }
    // Recording time never runs ahead of the wall clock since the start.
    if q.offset_ms < 0 || q.offset_ms > project.elapsed_ms + 5_000 {
        return Err(AppError::BadRequest(
            "offset_ms must lie between the start of the recording and now".into(),
        ));
    }
    let content_type = match sniff_image(&body) {
        Sniffed::Image(t) => t,
        Sniffed::Heic => {
            return Err(AppError::Unsupported(
                "HEIC photos are not supported: set the camera to JPEG (\"Most compatible\")"
                    .into(),
            ));
        }
        Sniffed::Unknown => {
            return Err(AppError::Unsupported(
                "a photo must be a JPEG, PNG or WebP image".into(),
            ));
        }
    };
    let existing: Option<Uuid> = sqlx::query_scalar("SELECT project_id FROM photos WHERE id = $1")
        .bind(q.photo_id)
        .fetch_optional(&s.db)
        .await?;
    match existing {
        Some(p) if p == q.project_id => {
            return Ok(Json(serde_json::json!({ "stored": q.photo_id })));
        }
        Some(_) => return Err(AppError::Conflict("photo id already used".into())),
        None => {}
    }
    let key = format!("ingest/{}/{}/photos/{}", user.id, q.project_id, q.photo_id);
    let size = body.len() as i32;
    s.ingest.put(&key, body).await?;
    sqlx::query(
        "INSERT INTO photos (id, project_id, offset_ms, content_type, size, object_key)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(q.photo_id)
    .bind(q.project_id)
    .bind(q.offset_ms)
    .bind(content_type)
    .bind(size)
    .bind(&key)
    .execute(&s.db)
    .await?;
    tracing::info!(project_id = %q.project_id, size, "photo stored");
    Ok(Json(serde_json::json!({ "stored": q.photo_id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    project_id: Uuid,
    last_seq: i32,
    duration_ms: i64,
}

async fn stop(
    State(s): State<AppState>,
    session: Session,
    ApiJson(req): ApiJson<StopRequest>,
) -> Result<Response, AppError> {
    let user = session::ready_user(&session).await?;
    let project = project_of(&s, &user, req.project_id).await?;
    let limits = &s.config.limits;
    if req.last_seq < 0 || req.last_seq as i64 > limits.max_recording_secs / CHUNK_SECONDS + 1 {
        return Err(AppError::BadRequest("last_seq is out of range".into()));
    }
    if req.duration_ms < 0 || req.duration_ms > (limits.max_recording_secs + CHUNK_SECONDS) * 1000 {
        return Err(AppError::BadRequest("duration_ms is out of range".into()));
    }
    if project.status == "queued" && project.last_seq == Some(req.last_seq) {
        return Ok(Json(serde_json::json!({ "state": "queued" })).into_response());
    }
    if project.status != "recording" {
        return Err(AppError::Conflict(
            "this recording is already stopped".into(),
        ));
    }
    let missing: Vec<i32> = sqlx::query_scalar(
        "SELECT s FROM generate_series(0, $2) AS s
          WHERE NOT EXISTS (SELECT 1 FROM chunks WHERE project_id = $1 AND seq = s)
          ORDER BY s LIMIT 1000",
    )
    .bind(req.project_id)
    .bind(req.last_seq)
    .fetch_all(&s.db)
    .await?;
    if !missing.is_empty() {
        let body = serde_json::json!({ "error": "chunks are missing", "missing": missing });
        return Ok((axum::http::StatusCode::CONFLICT, Json(body)).into_response());
    }
    let beyond: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chunks WHERE project_id = $1 AND seq > $2")
            .bind(req.project_id)
            .bind(req.last_seq)
            .fetch_one(&s.db)
            .await?;
    if beyond > 0 {
        return Err(AppError::BadRequest("chunks exist beyond last_seq".into()));
    }
    let updated = sqlx::query(
        "UPDATE projects SET status = 'queued', last_seq = $2, duration_ms = $3, stopped_at = now()
          WHERE id = $1 AND status = 'recording'",
    )
    .bind(req.project_id)
    .bind(req.last_seq)
    .bind(req.duration_ms)
    .execute(&s.db)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(AppError::Conflict(
            "this recording is already stopped".into(),
        ));
    }
    let job = Job {
        kind: JobKind::Prepare,
        project_id: req.project_id,
    };
    let stream = kiroku_jobs::stream_for(&s.config.redis_prefix);
    if let Err(e) = kiroku_jobs::enqueue_to(&s.queue, &stream, &job).await {
        // Put the project back so the island's retry of `stop` can succeed.
        sqlx::query("UPDATE projects SET status = 'recording', stopped_at = NULL WHERE id = $1")
            .bind(req.project_id)
            .execute(&s.db)
            .await?;
        return Err(AppError::Internal(format!("queue: {e}")));
    }
    tracing::info!(project_id = %req.project_id, last_seq = req.last_seq, "recording stopped and queued");
    Ok(Json(serde_json::json!({ "state": "queued" })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscardRequest {
    project_id: Uuid,
}

async fn discard(
    State(s): State<AppState>,
    session: Session,
    ApiJson(req): ApiJson<DiscardRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    let user = session::ready_user(&session).await?;
    // A discarded recording is deleted for good, like a deleted project:
    // the app's put-only key cannot remove what it stored, so a worker's
    // delete_project job removes the chunks and photos and their rows.
    let done = sqlx::query(
        "UPDATE projects SET status = 'deleting', stopped_at = now()
          WHERE id = $1 AND user_id = $2 AND status = 'recording'",
    )
    .bind(req.project_id)
    .bind(user.id)
    .execute(&s.db)
    .await?;
    if done.rows_affected() != 1 {
        return Err(AppError::NotFound);
    }
    let job = Job {
        kind: JobKind::DeleteProject,
        project_id: req.project_id,
    };
    kiroku_jobs::enqueue_to(
        &s.queue,
        &kiroku_jobs::stream_for(&s.config.redis_prefix),
        &job,
    )
    .await
    .map_err(|e| AppError::Internal(format!("queue: {e}")))?;
    Ok(Json(serde_json::json!({ "state": "discarded" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_told_apart_by_magic_bytes() {
        assert_eq!(
            sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0, 0]),
            Sniffed::Image("image/jpeg")
        );
        assert_eq!(
            sniff_image(b"\x89PNG\r\n\x1a\n...."),
            Sniffed::Image("image/png")
        );
        assert_eq!(
            sniff_image(b"RIFF\0\0\0\0WEBPVP8 "),
            Sniffed::Image("image/webp")
        );
        assert_eq!(sniff_image(b"\0\0\0\x18ftypheic\0\0"), Sniffed::Heic);
        assert_eq!(sniff_image(b"<svg onload=alert(1)>"), Sniffed::Unknown);
        assert_eq!(sniff_image(b""), Sniffed::Unknown);
    }

    #[test]
    fn audio_types_are_reduced_to_their_base() {
        assert_eq!(
            base_audio_type("audio/webm;codecs=opus"),
            Some("audio/webm")
        );
        assert_eq!(base_audio_type("Audio/MP4"), Some("audio/mp4"));
        assert_eq!(base_audio_type("video/webm"), None);
    }
}
