//! Kiroku's background workers.
//!
//! The worker process holds the worker database role, the queue Redis and
//! the worker storage credential (every area). It answers `/healthz` and
//! `/readyz` on its own small HTTP listener for the operator's probes.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use kiroku_runtime::{ConfigError, Env};
use kiroku_storage::{Role, StorageConfig, Store, WorkerStore};
use sqlx::PgPool;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub queue_redis_url: String,
    pub storage: StorageConfig,
}

impl WorkerConfig {
    pub fn from_env(env: &Env) -> Result<WorkerConfig, ConfigError> {
        let storage = StorageConfig::from_env(env)?;
        storage.require(Role::Worker)?;
        Ok(WorkerConfig {
            listen: env.parse_or(
                "KIROKU_WORKER_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8082)),
            )?,
            database_url: env.or(
                "KIROKU_WORKER_DATABASE_URL",
                "postgres://kiroku_worker@127.0.0.1:5432/kiroku",
            ),
            queue_redis_url: env.or("KIROKU_QUEUE_REDIS_URL", "redis://127.0.0.1:6379/1"),
            storage,
        })
    }
}

#[derive(Clone)]
pub struct WorkerState {
    pub config: Arc<WorkerConfig>,
    pub db: PgPool,
    pub queue: fred::clients::Client,
    pub store: WorkerStore,
}

pub async fn connect(config: WorkerConfig) -> anyhow::Result<WorkerState> {
    use fred::prelude::*;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&config.database_url)
        .await
        .context("cannot connect to PostgreSQL (KIROKU_WORKER_DATABASE_URL)")?;
    let queue = Builder::from_config(
        Config::from_url(&config.queue_redis_url).context("KIROKU_QUEUE_REDIS_URL is invalid")?,
    )
    .build()?;
    queue
        .init()
        .await
        .context("cannot connect to the queue Redis")?;
    let store = WorkerStore(Store::open(&config.storage, Role::Worker)?);
    Ok(WorkerState {
        config: Arc::new(config),
        db,
        queue,
        store,
    })
}

pub fn health_router(state: WorkerState) -> Router {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    kiroku_runtime::http::observe(app)
}

async fn readyz(State(s): State<WorkerState>) -> impl IntoResponse {
    use fred::interfaces::ClientLike;
    type Check = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;
    let (db, queue, store) = (s.db.clone(), s.queue.clone(), s.store.clone());
    let checks: Vec<(&str, Check)> = vec![
        (
            "database",
            Box::pin(async move {
                sqlx::query("SELECT 1")
                    .execute(&db)
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
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) }),
        ),
    ];
    kiroku_runtime::http::readiness(checks).await
}

/// Runs the worker until SIGINT/SIGTERM.
pub async fn run(config: WorkerConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = connect(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (KIROKU_WORKER_LISTEN)"))?;
    tracing::info!(address = %listen, "worker health endpoint listening");
    // LIMITATION: no job kinds are consumed yet; the Redis Streams queue and
    // the pipeline jobs are issue 5. The process already holds every
    // connection they need and reports on them.
    kiroku_runtime::http::serve(listener, health_router(state)).await?;
    Ok(())
}
