//! `kiroku doctor`: checks that every configured service answers and that
//! every configured credential has exactly its permissions, no more.

use bytes::Bytes;
use kiroku_runtime::Env;
use kiroku_storage::{Backend, Role, StorageError, Store};
use sqlx::PgPool;

use crate::config::AppConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub check: String,
    pub message: String,
}

#[derive(Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, level: Level, check: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            level,
            check: check.into(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.level == Level::Error)
    }
}

pub async fn run(cfg: &AppConfig, env: &Env) -> Report {
    let mut r = Report::default();
    check_app_db(cfg, &mut r).await;
    if let Some(url) = env.get("KIROKU_WORKER_DATABASE_URL") {
        check_worker_db(url, &mut r).await;
    }
    check_redis("session redis", &cfg.session_redis_url, &mut r).await;
    check_redis("queue redis", &cfg.queue_redis_url, &mut r).await;
    check_storage(cfg, &mut r).await;
    r
}

async fn privilege(db: &PgPool, sql: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(db).await
}

async fn check_app_db(cfg: &AppConfig, r: &mut Report) {
    let name = "app database";
    let db = match crate::db::connect(&cfg.database_url).await {
        Ok(db) => db,
        Err(e) => return r.push(Level::Error, name, format!("cannot connect: {e}")),
    };
    let forbidden = [
        (
            "SELECT has_column_privilege('user_public_keys', 'public_key', 'UPDATE')",
            "the app's role can change users' public keys",
        ),
        (
            "SELECT has_table_privilege('user_public_keys', 'DELETE')",
            "the app's role can delete users' public keys",
        ),
        (
            "SELECT has_table_privilege('artifacts', 'DELETE')",
            "the app's role can delete artifacts",
        ),
        (
            "SELECT has_table_privilege('artifacts', 'INSERT')",
            "the app's role can write artifacts",
        ),
    ];
    check_forbidden(&db, name, &forbidden, r).await;
}

async fn check_worker_db(url: &str, r: &mut Report) {
    let name = "worker database";
    let db = match crate::db::connect(url).await {
        Ok(db) => db,
        Err(e) => return r.push(Level::Error, name, format!("cannot connect: {e}")),
    };
    let forbidden = [
        (
            "SELECT has_table_privilege('users', 'INSERT')",
            "the worker's role can create users",
        ),
        (
            "SELECT has_column_privilege('users', 'auth_hash', 'SELECT')",
            "the worker's role can read login secrets",
        ),
        (
            "SELECT has_table_privilege('user_public_keys', 'UPDATE')",
            "the worker's role can change users' public keys",
        ),
    ];
    check_forbidden(&db, name, &forbidden, r).await;
}

async fn check_forbidden(db: &PgPool, name: &str, forbidden: &[(&str, &str)], r: &mut Report) {
    let mut clean = true;
    for (sql, problem) in forbidden {
        match privilege(db, sql).await {
            Ok(false) => {}
            Ok(true) => {
                clean = false;
                r.push(Level::Error, name, *problem);
            }
            Err(e) => {
                clean = false;
                r.push(
                    Level::Error,
                    name,
                    format!("cannot check privileges (migrated?): {e}"),
                );
            }
        }
    }
    if clean {
        r.push(Level::Ok, name, "connected; privileges are least");
    }
    db.close().await;
}

async fn check_redis(name: &str, url: &str, r: &mut Report) {
    use fred::prelude::*;
    let result = async {
        let config = Config::from_url(url)?;
        let client = Builder::from_config(config).build()?;
        client.init().await?;
        let pong: String = client.ping(None).await?;
        client.quit().await?;
        Ok::<_, fred::error::Error>(pong)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), result).await {
        Ok(Ok(_)) => r.push(Level::Ok, name, "answers"),
        Ok(Err(e)) => r.push(Level::Error, name, format!("cannot reach: {e}")),
        Err(_) => r.push(Level::Error, name, "timed out"),
    }
}

/// What each role's credential must and must not do, probed for real.
async fn check_storage(cfg: &AppConfig, r: &mut Report) {
    if let Backend::Local { dir } = &cfg.storage.backend {
        r.push(
            Level::Warning,
            "storage",
            format!(
                "local disk at {}: it cannot enforce per-binary permissions; use S3 in production",
                dir.display()
            ),
        );
        return;
    }
    if cfg.storage.credentials(Role::App).is_none() {
        r.push(
            Level::Error,
            "storage",
            "KIROKU_APP_S3_ACCESS_KEY_ID is not set",
        );
    }
    for role in cfg.storage.roles() {
        let name = format!("{role} S3 key");
        let store = match Store::open(&cfg.storage, role) {
            Ok(s) => s,
            Err(e) => {
                r.push(Level::Error, &name, e.to_string());
                continue;
            }
        };
        let problems = probe(&store, role).await;
        if problems.is_empty() {
            r.push(Level::Ok, &name, "has exactly its permissions");
        }
        for p in problems {
            r.push(Level::Error, &name, p);
        }
    }
}

const PROBE: &str = "_doctor/probe";

/// Returns the problems found; empty means the credential is as designed.
async fn probe(store: &Store, role: Role) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |what: &str, allowed: bool, got: Result<(), StorageError>| match (allowed, got)
    {
        (true, Ok(())) | (false, Err(StorageError::AccessDenied)) => {}
        (true, Err(StorageError::NotFound)) if what.starts_with("get") => {}
        (true, Err(e)) => problems.push(format!("cannot {what}: {e}")),
        (false, Ok(())) | (false, Err(StorageError::NotFound)) => {
            problems.push(format!("can {what}, which its role must not"))
        }
        (false, Err(e)) => problems.push(format!("could not check {what}: {e}")),
    };
    let put = |key: String| async move { store.put(&key, Bytes::from_static(b"doctor")).await };
    let get = |key: String| async move { store.get(&key, None).await.map(drop) };
    let list = |prefix: &'static str| async move { store.list(prefix).await.map(drop) };
    match role {
        Role::App => {
            expect(
                "put under ingest/",
                true,
                put(format!("ingest/{PROBE}")).await,
            );
            expect(
                "read under ingest/",
                false,
                get(format!("ingest/{PROBE}")).await,
            );
            expect("list ingest/", false, list("ingest/").await);
            expect(
                "read under final/v1/",
                false,
                get(format!("final/v1/{PROBE}")).await,
            );
            expect(
                "write under work/",
                false,
                put(format!("work/{PROBE}")).await,
            );
        }
        Role::Export => {
            expect(
                "get under final/v1/",
                true,
                get(format!("final/v1/{PROBE}")).await,
            );
            expect(
                "write under final/v1/",
                false,
                put(format!("final/v1/{PROBE}")).await,
            );
            expect("list final/v1/", false, list("final/v1/").await);
            expect(
                "read under ingest/",
                false,
                get(format!("ingest/{PROBE}")).await,
            );
            expect(
                "read under work/",
                false,
                get(format!("work/{PROBE}")).await,
            );
        }
        Role::Worker => {
            expect("put under work/", true, put(format!("work/{PROBE}")).await);
            expect("get under work/", true, get(format!("work/{PROBE}")).await);
            expect("list work/", true, list("work/").await);
            expect(
                "delete under work/",
                true,
                store.delete(&format!("work/{PROBE}")).await,
            );
        }
    }
    problems
}
