//! Kiroku's background workers.
//!
//! The worker process holds the worker database role, the queue Redis and
//! the worker storage credential (every area). It answers `/healthz` and
//! `/readyz` on its own small HTTP listener for the operator's probes, and
//! consumes the job queue ([`queue`]) next to it.

pub mod cleanup;
pub mod process;
pub mod queue;
pub mod remote;
pub mod speech;
pub mod styling;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use kiroku_jobs::JobKind;
use kiroku_runtime::{ConfigError, Env};
use kiroku_storage::{Role, StorageConfig, Store, WorkerStore};
use sqlx::PgPool;

use crate::queue::{Delivery, Handlers, Queue, QueueConfig};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub queue_redis_url: String,
    pub queue: QueueConfig,
    pub storage: StorageConfig,
    /// The local speech engine's settings (model file, threads).
    pub whisper: speech::local::LocalConfig,
    /// `KIROKU_SPEECH_ENGINE=openai`: an OpenAI-compatible service instead
    /// of the local engine.
    pub openai_speech: Option<speech::openai::OpenAiSpeechConfig>,
    pub style: styling::StyleConfig,
    /// The chat model that rewrites scripts; `None` (the default) keeps the
    /// deterministic formatter only.
    pub rewrite: Option<process::rewrite::RewriteConfig>,
    pub remote: remote::RemoteConfig,
    /// The prefix of this deployment's Redis keys (`KIROKU_REDIS_PREFIX`).
    pub redis_prefix: String,
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
            queue: QueueConfig::from_env(env)?,
            whisper: speech::local::LocalConfig::from_env(env)?,
            openai_speech: match env.or("KIROKU_SPEECH_ENGINE", "local").as_str() {
                "local" => None,
                "openai" => Some(speech::openai::OpenAiSpeechConfig::from_env(env)?),
                _ => {
                    return Err(ConfigError::invalid(
                        "KIROKU_SPEECH_ENGINE",
                        "must be local or openai",
                    ));
                }
            },
            style: styling::StyleConfig::from_env(env)?,
            rewrite: process::rewrite::RewriteConfig::from_env(env)?,
            remote: remote::RemoteConfig::from_env(env)?,
            redis_prefix: env.or("KIROKU_REDIS_PREFIX", "kiroku"),
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
    /// The stream follow-up jobs are added to.
    pub jobs_stream: String,
    /// The speech engine; `None` when none is configured or it failed to
    /// load (transcription jobs then fail with that reason).
    pub transcriber: Option<process::SharedTranscriber>,
    /// Draws the photos of projects that asked for it.
    pub styler: styling::Styler,
    /// Rewrites scripts when the operator turned that on.
    pub rewriter: Option<Arc<process::rewrite::Rewriter>>,
}

pub async fn connect(config: WorkerConfig) -> anyhow::Result<WorkerState> {
    use fred::prelude::*;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&config.database_url)
        .await
        .context("cannot connect to PostgreSQL (KIROKU_WORKER_DATABASE_URL)")?;
    // The worker lives for days: it reconnects after a Redis restart
    // instead of failing every command from then on, and no command waits
    // forever (the blocking reads block for seconds, not minutes).
    let queue = Builder::from_config(
        Config::from_url(&config.queue_redis_url).context("KIROKU_QUEUE_REDIS_URL is invalid")?,
    )
    .with_connection_config(|c| {
        c.connection_timeout = std::time::Duration::from_secs(5);
    })
    .with_performance_config(|p| {
        p.default_command_timeout = std::time::Duration::from_secs(30);
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 100, 10_000, 2))
    .build()?;
    queue
        .init()
        .await
        .context("cannot connect to the queue Redis")?;
    let store = WorkerStore(Store::open(&config.storage, Role::Worker)?);
    let styler = styling::Styler::new(config.style.engine.clone(), config.remote.clone())?;
    let rewriter = match &config.rewrite {
        Some(c) => Some(Arc::new(process::rewrite::Rewriter::new(
            c.clone(),
            config.remote.clone(),
        )?)),
        None => None,
    };
    Ok(WorkerState {
        jobs_stream: config.queue.stream.clone(),
        transcriber: None,
        styler,
        rewriter,
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

/// The handler of each job kind this worker runs.
pub fn handlers(state: WorkerState) -> Handlers {
    fn job<F, Fut>(state: &WorkerState, f: F) -> impl queue::JobHandler
    where
        F: Fn(WorkerState, uuid::Uuid) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let state = state.clone();
        let f = Arc::new(f);
        move |d: Delivery| {
            let (state, f) = (state.clone(), f.clone());
            async move {
                let project = d.job.project_id;
                let result = f(state.clone(), project).await;
                if let Err(e) = &result {
                    // The last attempt tells the performer why.
                    if d.attempt >= state.config.queue.max_attempts {
                        let _ = process::mark_failed(&state, project, &format!("{e:#}")).await;
                    }
                }
                result
            }
        }
    }
    Handlers::new()
        .on(
            JobKind::DeleteProject,
            job(&state, |s, p| async move {
                cleanup::delete_project(&s, p).await
            }),
        )
        .on(
            JobKind::Prepare,
            job(&state, |s, p| async move { process::prepare(&s, p).await }),
        )
        .on(
            JobKind::Transcribe,
            job(
                &state,
                |s, p| async move { process::transcribe(&s, p).await },
            ),
        )
        .on(
            JobKind::Finalize,
            job(&state, |s, p| async move { process::finalize(&s, p).await }),
        )
}

/// The configured speech engine. A remote one is only set up here; the
/// local model is loaded, which takes a moment and hundreds of MB. Without
/// a usable model the worker still runs every other job, and transcription
/// jobs fail saying why.
pub async fn load_speech(
    config: &WorkerConfig,
) -> anyhow::Result<Option<process::SharedTranscriber>> {
    let engine: Arc<dyn speech::SpeechEngine> = if let Some(openai) = &config.openai_speech {
        let engine = speech::openai::OpenAiSpeech::new(openai.clone(), config.remote.clone())?;
        tracing::info!(engine = ?engine, "remote speech engine configured");
        Arc::new(engine)
    } else {
        let whisper = config.whisper.clone();
        match tokio::task::spawn_blocking(move || speech::local::LocalEngine::load(whisper)).await?
        {
            Ok(engine) => {
                tracing::info!("local speech engine loaded");
                Arc::new(engine)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no speech engine: transcription jobs will fail");
                return Ok(None);
            }
        }
    };
    Ok(Some(Arc::new(process::engine::EngineTranscriber(engine))))
}

/// Runs the worker until SIGINT/SIGTERM: the health endpoint and the job
/// consumer side by side. On a signal the endpoint stops first, then the
/// consumer stops taking jobs and finishes those in progress.
pub async fn run(config: WorkerConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    let queue_config = config.queue.clone();
    let speech = config.clone();
    let mut state = connect(config).await?;
    state.transcriber = load_speech(&speech).await?;
    tracing::info!(styler = ?state.styler, rewrite = state.rewriter.is_some(), "engines ready");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (KIROKU_WORKER_LISTEN)"))?;
    tracing::info!(address = %listen, "worker health endpoint listening");
    let queue = Queue::new(&state.queue, queue_config, handlers(state.clone()))
        .await
        .context("cannot join the job queue (KIROKU_QUEUE_REDIS_URL)")?;
    let stop = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(queue.run(stop.clone().cancelled_owned()));
    let served = kiroku_runtime::http::serve(listener, health_router(state)).await;
    stop.cancel();
    consumer.await.context("the job consumer failed")?;
    served?;
    Ok(())
}
