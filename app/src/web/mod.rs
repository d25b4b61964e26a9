//! The HTTP side of the app: shared state, the router and its layers.

pub(crate) mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use kiroku_storage::IngestWriter;
use sqlx::PgPool;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};
use tower_sessions_redis_store::RedisStore;

use crate::config::AppConfig;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<AppConfig>,
    pub db: PgPool,
    pub ingest: IngestWriter,
    /// The chunk hot path's database work, batched.
    pub chunks: crate::ledger::ChunkLedger,
    pub sessions: fred::clients::Pool,
    pub queue: fred::clients::Pool,
}

/// Where `static/` lives: next to the binary's working directory by
/// default (the repository root in development).
fn static_dir() -> std::path::PathBuf {
    std::env::var_os("KIROKU_STATIC_DIR_OVERRIDE")
        .map(Into::into)
        .unwrap_or_else(|| "static".into())
}

/// The stylesheet inside every HTML script (`templates/script.css`, which
/// the workers embed): the one inline style the pages allow, by its hash, so
/// that the script previewed in the sandboxed frame (which inherits this
/// policy) is laid out as written.
const SCRIPT_CSS: &str = include_str!("../../../templates/script.css");

/// The Content Security Policy: no inline script, no inline style but the
/// script's own stylesheet, WebAssembly allowed, network only to ourselves
/// and the export service.
fn csp(config: &AppConfig) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let export = crate::config::origin_of(&config.export_public_url);
    let script_css = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(SCRIPT_CSS.as_bytes()));
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
         style-src 'self' 'sha256-{script_css}'; \
         img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self' {export}; \
         frame-src blob:; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

pub fn router(state: AppState) -> Router {
    let csp = HeaderValue::from_str(&csp(&state.config)).expect("CSP is ASCII");
    let cfg = &state.config;
    let sessions = SessionManagerLayer::new(RedisStore::new(state.sessions.clone()))
        .with_name("kiroku_session")
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(cfg.secure_cookies())
        .with_expiry(Expiry::OnInactivity(time::Duration::hours(
            cfg.session_hours,
        )));
    let api = crate::auth::routes().layer(DefaultBodyLimit::max(64 * 1024));
    let recording = crate::recording::routes(cfg.limits.max_photo_bytes);
    let app = Router::new()
        .merge(pages::routes())
        .merge(api)
        .merge(recording)
        .merge(crate::projects::routes())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .nest_service("/static", ServeDir::new(static_dir()))
        .with_state(state)
        .layer(sessions)
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            csp,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ));
    kiroku_runtime::http::observe(app)
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    use fred::interfaces::ClientLike;
    let db = s.db.clone();
    let sessions = s.sessions.clone();
    let queue = s.queue.clone();
    let ingest = s.ingest.clone();
    kiroku_runtime::http::readiness(vec![
        (
            "database",
            Box::pin(async move {
                sqlx::query("SELECT 1")
                    .execute(&db)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>,
        ),
        (
            "session redis",
            Box::pin(async move {
                sessions
                    .ping::<String>(None)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        ),
        (
            "queue redis",
            Box::pin(async move {
                queue
                    .ping::<String>(None)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        ),
        (
            "storage",
            Box::pin(async move { ingest.ping().await.map_err(|e| e.to_string()) }),
        ),
    ])
    .await
}
