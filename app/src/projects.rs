//! A performer's projects: the list, one project's page with its sealed
//! artifacts, export tokens for them, rename and delete.
//!
//! The app never reads an artifact: it lists the rows the workers wrote and
//! signs short-lived, path-bound tokens with which the browser fetches the
//! ciphertext from the export service.

use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kiroku_crypto::b64;
use kiroku_crypto::token::Claims;
use kiroku_jobs::{Job, JobKind};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;
use uuid::Uuid;

use crate::error::AppError;
use crate::session::{self, ApiJson};
use crate::web::AppState;
use crate::web::pages::{Ctx, ctx, render, require_ready};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/projects", get(list))
        .route("/projects/{id}", get(page))
        .route("/projects/{id}/progress", get(progress))
        .route("/projects/{id}/retry", post(retry))
        .route("/api/artifacts/{id}/token", post(token))
        .route("/api/project/rename", post(rename))
        .route("/api/project/delete", post(delete))
}

/// `1:05:09` or `4:07`.
pub fn duration_text(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "—".into() };
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// `12.3 KB`, `4.0 MB`.
pub fn size_text(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b < 1000.0 {
        format!("{bytes} B")
    } else if b < 1e6 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

#[derive(sqlx::FromRow)]
struct ListRow {
    id: Uuid,
    title: String,
    status: String,
    created_at: time::OffsetDateTime,
    duration_ms: Option<i64>,
    photos: i64,
}

pub struct ProjectItem {
    pub id: String,
    pub title: String,
    pub status: String,
    pub created: String,
    pub duration: String,
    pub photos: i64,
}

#[derive(Template)]
#[template(path = "projects.html")]
struct ListPage {
    ctx: Ctx,
    projects: Vec<ProjectItem>,
}

async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    session: Session,
) -> Result<Response, AppError> {
    let ctx = ctx(&headers, &session).await?;
    let user = match require_ready(&ctx) {
        Ok(u) => u.clone(),
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let rows: Vec<ListRow> = sqlx::query_as(
        "SELECT p.id, p.title, p.status, p.created_at, p.duration_ms,
                COALESCE(p.photo_count::bigint,
                         (SELECT count(*) FROM photos f WHERE f.project_id = p.id)) AS photos
           FROM projects p
          WHERE p.user_id = $1 AND p.status NOT IN ('deleting', 'deleted', 'discarded')
          ORDER BY p.created_at DESC LIMIT 500",
    )
    .bind(user.id)
    .fetch_all(&s.db)
    .await?;
    let projects = rows
        .into_iter()
        .map(|r| ProjectItem {
            id: r.id.to_string(),
            status: ctx.t.status(&r.status).to_owned(),
            title: r.title,
            created: r.created_at.date().to_string(),
            duration: duration_text(r.duration_ms),
            photos: r.photos,
        })
        .collect();
    render(ListPage { ctx, projects })
}

pub struct ArtifactItem {
    pub id: String,
    pub kind: String,
    pub file_name: String,
    pub content_type: String,
    pub size: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectPage {
    ctx: Ctx,
    id: String,
    title: String,
    participant: String,
    status: String,
    status_code: String,
    created: String,
    duration: String,
    photos: i64,
    artifacts: Vec<ArtifactItem>,
    progress: ProgressView,
}

async fn page(
    State(s): State<AppState>,
    headers: HeaderMap,
    session: Session,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    let ctx = ctx(&headers, &session).await?;
    let user = match require_ready(&ctx) {
        Ok(u) => u.clone(),
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let row: Option<(String, String, String, time::OffsetDateTime, Option<i64>)> = sqlx::query_as(
        "SELECT title, participant, status, created_at, duration_ms FROM projects
          WHERE id = $1 AND user_id = $2 AND status NOT IN ('deleting', 'deleted')",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&s.db)
    .await?;
    let Some((title, participant, status, created, duration_ms)) = row else {
        return Err(AppError::NotFound);
    };
    let photos: i64 = sqlx::query_scalar(
        "SELECT COALESCE((SELECT photo_count::bigint FROM projects WHERE id = $1),
                         (SELECT count(*) FROM photos WHERE project_id = $1))",
    )
    .bind(id)
    .fetch_one(&s.db)
    .await?;
    let rows: Vec<(Uuid, String, String, String, i64, time::OffsetDateTime)> = sqlx::query_as(
        "SELECT id, kind, file_name, content_type, size, created_at FROM artifacts
          WHERE project_id = $1 ORDER BY kind",
    )
    .bind(id)
    .fetch_all(&s.db)
    .await?;
    let artifacts = rows
        .into_iter()
        .map(
            |(aid, kind, file_name, content_type, size, created)| ArtifactItem {
                id: aid.to_string(),
                kind,
                file_name,
                content_type,
                size: size_text(size),
                created: created.date().to_string(),
            },
        )
        .collect();
    let progress = progress_view(&s, &ctx, id).await?;
    render(ProjectPage {
        progress,
        id: id.to_string(),
        title,
        participant,
        status: ctx.t.status(&status).to_owned(),
        status_code: status,
        created: created.date().to_string(),
        duration: duration_text(duration_ms),
        photos,
        artifacts,
        ctx,
    })
}

#[derive(Serialize)]
pub struct TokenResponse {
    url: String,
    token: String,
    artifact_id: Uuid,
    kind: String,
    content_type: String,
    filename: String,
    size: i64,
    sha256: String,
    dek_enc: String,
}

#[derive(sqlx::FromRow)]
struct ArtifactRow {
    project_id: Uuid,
    kind: String,
    content_type: String,
    file_name: String,
    object_key: String,
    size: i64,
    sha256: Vec<u8>,
    dek_enc: Vec<u8>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Signs an export token for one artifact of the signed-in user; anyone
/// else's artifact is "not found" before any token exists.
async fn token(
    State(s): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<TokenResponse>, AppError> {
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    session::check_csrf(&session, presented).await?;
    let user = session::ready_user(&session).await?;
    let signing = s
        .config
        .export_keys
        .as_ref()
        .ok_or_else(|| AppError::internal("KIROKU_EXPORT_KEYS is not configured"))?;
    let row: ArtifactRow = sqlx::query_as(
        "SELECT a.project_id, a.kind, a.content_type, a.file_name, a.object_key, a.size, a.sha256,
                a.dek_enc
           FROM artifacts a JOIN projects p ON p.id = a.project_id
          WHERE a.id = $1 AND p.user_id = $2 AND p.status NOT IN ('deleting', 'deleted')",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&s.db)
    .await?
    .ok_or(AppError::NotFound)?;
    let iat = unix_now();
    let claims = Claims {
        path: row.object_key.clone(),
        project_id: row.project_id.to_string(),
        artifact_id: id.to_string(),
        content_type: row.content_type.clone(),
        filename: row.file_name.clone(),
        iat,
        exp: iat + signing.token_ttl,
    };
    let token = signing
        .ring
        .sign(&signing.kid, &claims)
        .map_err(|e| AppError::Internal(format!("token: {e}")))?;
    tracing::info!(artifact_id = %id, kid = %signing.kid, "export token issued");
    Ok(Json(TokenResponse {
        url: format!(
            "{}/objects/{}",
            s.config.export_public_url.trim_end_matches('/'),
            row.object_key
        ),
        token,
        artifact_id: id,
        kind: row.kind,
        content_type: row.content_type,
        filename: row.file_name,
        size: row.size,
        sha256: b64::encode(row.sha256),
        dek_enc: b64::encode(row.dek_enc),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    project_id: Uuid,
    title: String,
}

async fn rename(
    State(s): State<AppState>,
    session: Session,
    ApiJson(req): ApiJson<RenameRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    let user = session::ready_user(&session).await?;
    let title = req.title.trim();
    if title.is_empty() || title.chars().count() > 200 || title.chars().any(char::is_control) {
        return Err(AppError::BadRequest(
            "title must be 1–200 characters of text".into(),
        ));
    }
    let done = sqlx::query(
        "UPDATE projects SET title = $3 WHERE id = $1 AND user_id = $2
            AND status NOT IN ('deleting', 'deleted')",
    )
    .bind(req.project_id)
    .bind(user.id)
    .bind(title)
    .execute(&s.db)
    .await?;
    if done.rows_affected() != 1 {
        return Err(AppError::NotFound);
    }
    Ok(Json(serde_json::json!({ "title": title })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    project_id: Uuid,
}

/// Marks the project for deletion and asks the workers to delete its
/// objects (the app's storage key cannot delete) and artifact rows.
async fn delete(
    State(s): State<AppState>,
    session: Session,
    ApiJson(req): ApiJson<DeleteRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    let user = session::ready_user(&session).await?;
    let done = sqlx::query(
        "UPDATE projects SET status = 'deleting' WHERE id = $1 AND user_id = $2
            AND status NOT IN ('recording', 'deleting', 'deleted')",
    )
    .bind(req.project_id)
    .bind(user.id)
    .execute(&s.db)
    .await?;
    if done.rows_affected() != 1 {
        return Err(AppError::NotFound);
    }
    let stream = kiroku_jobs::stream_for(&s.config.redis_prefix);
    let job = Job {
        kind: JobKind::DeleteProject,
        project_id: req.project_id,
    };
    kiroku_jobs::enqueue_to(&s.queue, &stream, &job)
        .await
        .map_err(|e| AppError::Internal(format!("queue: {e}")))?;
    tracing::info!(project_id = %req.project_id, "project deletion queued");
    Ok(Json(serde_json::json!({ "state": "deleting" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(duration_text(Some(65_000)), "1:05");
        assert_eq!(duration_text(Some(3_725_000)), "1:02:05");
        assert_eq!(duration_text(None), "—");
        assert_eq!(size_text(999), "999 B");
        assert_eq!(size_text(12_345), "12.3 KB");
        assert_eq!(size_text(4_000_000), "4.0 MB");
    }

    #[test]
    fn notices_are_localised_and_unknown_codes_dropped() {
        let es = &crate::i18n::ES;
        assert_eq!(
            notice_text(es, "unstyled:quota:3").unwrap(),
            es.notice_quota.replace("{n}", "3")
        );
        assert!(
            notice_text(&crate::i18n::EN, "unstyled:failed:1")
                .unwrap()
                .contains("1")
        );
        assert!(notice_text(es, "rewrite:refused").is_some());
        for bad in [
            "",
            "unstyled",
            "unstyled:quota:x",
            "unstyled:other:1",
            "rewrite:x",
            "<b>",
        ] {
            assert_eq!(notice_text(es, bad), None, "{bad}");
        }
    }
}

/// The live part of the project page, refreshed by htmx while processing.
pub struct ProgressView {
    pub id: String,
    pub active: bool,
    pub failed: bool,
    pub status: String,
    pub detail: String,
    pub failure: String,
    pub percent: i32,
    /// What the performer should know about a finished script.
    pub notices: Vec<String>,
}

#[derive(Template)]
#[template(path = "progress.html")]
struct ProgressFragment {
    ctx: Ctx,
    progress: ProgressView,
}

#[derive(sqlx::FromRow)]
struct ProgressRow {
    status: String,
    step: Option<String>,
    step_done: i32,
    step_total: i32,
    failure: Option<String>,
    notices: Vec<String>,
}

/// The page's sentence for a notice code the worker stored
/// (`migrations/*_notices.sql`); unknown codes are not shown.
fn notice_text(t: &crate::i18n::Texts, code: &str) -> Option<String> {
    let mut parts = code.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("unstyled"), Some(reason), Some(n)) => {
            let n: u32 = n.parse().ok()?;
            let text = match reason {
                "quota" => t.notice_quota,
                "failed" => t.notice_style_failed,
                _ => return None,
            };
            Some(text.replace("{n}", &n.to_string()))
        }
        (Some("rewrite"), Some("failed"), None) => Some(t.notice_rewrite_failed.to_owned()),
        (Some("rewrite"), Some("refused"), None) => Some(t.notice_rewrite_refused.to_owned()),
        _ => None,
    }
}

async fn progress_view(s: &AppState, ctx: &Ctx, id: Uuid) -> Result<ProgressView, AppError> {
    let user = ctx.user.as_ref().ok_or(AppError::Unauthorized)?;
    let row: Option<ProgressRow> = sqlx::query_as(
        "SELECT status, step, step_done, step_total, failure, notices FROM projects
          WHERE id = $1 AND user_id = $2 AND status NOT IN ('deleting', 'deleted')",
    )
    .bind(id)
    .bind(user.id)
    .fetch_optional(&s.db)
    .await?;
    let ProgressRow {
        status,
        step,
        step_done: done,
        step_total: total,
        failure,
        notices,
    } = row.ok_or(AppError::NotFound)?;
    let t = ctx.t;
    let detail = match step.as_deref() {
        _ if status == "queued" => t.step_queued.to_owned(),
        Some("prepare") => t.step_prepare.to_owned(),
        Some("transcribe") => t
            .step_transcribe
            .replace("{done}", &done.to_string())
            .replace("{total}", &total.to_string()),
        Some("finalize") => t.step_finalize.to_owned(),
        _ => String::new(),
    };
    let percent = match step.as_deref() {
        Some("prepare") => 5,
        Some("transcribe") if total > 0 => 10 + 80 * done / total,
        Some("finalize") => 95,
        _ => 0,
    };
    Ok(ProgressView {
        id: id.to_string(),
        active: matches!(status.as_str(), "queued" | "processing"),
        failed: status == "failed",
        status: t.status(&status).to_owned(),
        detail,
        failure: failure.unwrap_or_default(),
        percent,
        notices: if status == "ready" {
            notices.iter().filter_map(|c| notice_text(t, c)).collect()
        } else {
            Vec::new()
        },
    })
}

async fn progress(
    State(s): State<AppState>,
    headers: HeaderMap,
    session: Session,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    let ctx = ctx(&headers, &session).await?;
    if require_ready(&ctx).is_err() {
        return Err(AppError::Unauthorized);
    }
    let view = progress_view(&s, &ctx, id).await?;
    let finished = !view.active && !view.failed;
    let mut resp = render(ProgressFragment {
        ctx,
        progress: view,
    })?;
    // When processing ends, reload the page so the script appears.
    if finished && headers.contains_key("hx-request") {
        resp.headers_mut()
            .insert("hx-refresh", axum::http::HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Queues a failed project again; nothing was deleted when it failed.
async fn retry(
    State(s): State<AppState>,
    headers: HeaderMap,
    session: Session,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    session::check_csrf(&session, presented).await?;
    let user = session::ready_user(&session).await?;
    let done = sqlx::query(
        "UPDATE projects SET status = 'queued', failure = NULL, step = NULL, step_done = 0, step_total = 0
          WHERE id = $1 AND user_id = $2 AND status = 'failed'",
    )
    .bind(id)
    .bind(user.id)
    .execute(&s.db)
    .await?;
    if done.rows_affected() != 1 {
        return Err(AppError::Conflict(
            "only a failed project can be retried".into(),
        ));
    }
    let stream = kiroku_jobs::stream_for(&s.config.redis_prefix);
    kiroku_jobs::enqueue_to(
        &s.queue,
        &stream,
        &Job {
            kind: JobKind::Prepare,
            project_id: id,
        },
    )
    .await
    .map_err(|e| AppError::Internal(format!("queue: {e}")))?;
    tracing::info!(project_id = %id, "project retried");
    let ctx = ctx(&headers, &session).await?;
    let view = progress_view(&s, &ctx, id).await?;
    render(ProgressFragment {
        ctx,
        progress: view,
    })
}
