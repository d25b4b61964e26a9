//! PostgreSQL connections and migrations.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The schema migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A small pool, for the operator's commands.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    connect_pool(url, 4).await
}

/// The server's pool of at most `max` connections.
pub async fn connect_pool(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
}

/// Applies pending migrations as the schema owner.
pub async fn migrate(owner_url: &str) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(owner_url)
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}
