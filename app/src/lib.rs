//! Kiroku's web server and operator tooling.
//!
//! `main.rs` only parses the command line; everything it runs is here so
//! that tests can drive it.

pub mod auth;
pub mod config;
pub mod db;
pub mod doctor;
pub mod error;
pub mod i18n;
pub mod ledger;
pub mod projects;
pub mod recording;
pub mod session;
pub mod users;
pub mod web;

use std::sync::Arc;

use anyhow::Context;
use kiroku_storage::{IngestWriter, Role, Store};

use crate::config::AppConfig;

/// Connects a fred pool to `url` and waits until it answers.
pub async fn redis_pool(url: &str) -> anyhow::Result<fred::clients::Pool> {
    use fred::prelude::*;
    let config = Config::from_url(url).context("invalid Redis URL")?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = std::time::Duration::from_secs(5);
        })
        .build_pool(4)?;
    pool.init().await.context("cannot connect to Redis")?;
    Ok(pool)
}

/// Connects everything the server needs.
pub async fn state(config: AppConfig) -> anyhow::Result<web::AppState> {
    config.storage.require(Role::App)?;
    let db = db::connect_pool(&config.database_url, config.database_pool)
        .await
        .context("cannot connect to PostgreSQL")?;
    let sessions = redis_pool(&config.session_redis_url)
        .await
        .context("session Redis")?;
    let queue = redis_pool(&config.queue_redis_url)
        .await
        .context("queue Redis")?;
    let ingest = IngestWriter::new(Store::open(&config.storage, Role::App)?);
    Ok(web::AppState {
        config: Arc::new(config),
        chunks: ledger::ChunkLedger::start(db.clone()),
        db,
        ingest,
        sessions,
        queue,
    })
}

/// Runs the web server until SIGINT/SIGTERM.
pub async fn serve(config: AppConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = state(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (KIROKU_APP_LISTEN)"))?;
    tracing::info!(address = %listen, "app listening");
    kiroku_runtime::http::serve(listener, web::router(state)).await?;
    Ok(())
}
