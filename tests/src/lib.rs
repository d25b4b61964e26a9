//! Helpers shared by the cross-crate tests. They run against the real
//! services that `scripts/services.sh up` starts; `just test` loads the
//! generated `.data/kiroku.env` before running them.

use kiroku_runtime::Env;
use kiroku_storage::{Role, StorageConfig, Store};

/// The configuration the services script generated. Panics with a hint
/// when the tests are run without it.
pub fn env() -> Env {
    let env = Env::from_process();
    assert!(
        env.get("KIROKU_MIGRATE_DATABASE_URL").is_some(),
        "KIROKU_* variables are missing: run the tests through `just test`"
    );
    env
}

/// Storage configuration pointing at the test SeaweedFS, whatever
/// `KIROKU_STORAGE` says for development.
pub fn s3_config(env: &Env) -> StorageConfig {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for name in kiroku_runtime::KNOWN {
        if let Some(v) = env.get(name) {
            pairs.push(((*name).to_owned(), v.to_owned()));
        }
    }
    pairs.retain(|(k, _)| k != "KIROKU_STORAGE");
    pairs.push(("KIROKU_STORAGE".into(), "s3".into()));
    let env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    StorageConfig::from_env(&env).expect("S3 configuration")
}

pub fn s3_store(env: &Env, role: Role) -> Store {
    Store::open(&s3_config(env), role).expect("S3 store")
}

/// A short unique suffix for keys, database names and usernames.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A throwaway database, migrated, with URLs for each role.
pub struct TestDb {
    pub name: String,
    pub owner_url: String,
    pub app_url: String,
    pub worker_url: String,
}

fn with_db(url: &str, db: &str) -> String {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/{db}")
}

impl TestDb {
    /// Creates `kiroku_t_<random>` owned by the schema owner and applies the
    /// migrations as the app does.
    pub async fn create(env: &Env) -> TestDb {
        use sqlx::Connection;
        let owner = env.get("KIROKU_MIGRATE_DATABASE_URL").unwrap().to_owned();
        let name = format!("kiroku_t_{}", unique());
        let mut conn = sqlx::PgConnection::connect(&owner).await.expect("connect as owner");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        conn.close().await.ok();
        let db = TestDb {
            owner_url: with_db(&owner, &name),
            app_url: with_db(env.get("KIROKU_APP_DATABASE_URL").unwrap(), &name),
            worker_url: with_db(env.get("KIROKU_WORKER_DATABASE_URL").unwrap(), &name),
            name,
        };
        kiroku_app::db::migrate(&db.owner_url).await.expect("migrations apply");
        db
    }

    /// Drops the database (connections must be closed first).
    pub async fn drop_db(self, env: &Env) {
        use sqlx::Connection;
        let owner = env.get("KIROKU_MIGRATE_DATABASE_URL").unwrap();
        let mut conn = sqlx::PgConnection::connect(owner).await.expect("connect as owner");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// Where cargo put the binaries of this build (`target/debug`).
pub fn bin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(|d| d.parent()).expect("target/debug/deps").to_owned()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Kiroku binary running as a child process, killed on drop.
pub struct Service {
    pub child: std::process::Child,
    pub name: &'static str,
}

impl Service {
    /// Starts `name` from [`bin_dir`] with the process's `KIROKU_*`
    /// variables plus `overrides` (an empty value removes a variable).
    pub fn start(name: &'static str, args: &[&str], overrides: &[(&str, String)]) -> Service {
        let path = bin_dir().join(name);
        assert!(path.exists(), "{} is missing: run `cargo build --bins` first", path.display());
        let mut cmd = std::process::Command::new(path);
        cmd.args(args).stdout(std::process::Stdio::null());
        for (k, v) in overrides {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        Service { child: cmd.spawn().expect("spawn service"), name }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait for service");
        std::mem::forget(self);
        status
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` until it answers 200, for at most `secs` seconds.
pub async fn wait_ready(url: &str, secs: u64) -> Result<String, String> {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut last = String::from("no answer");
    while std::time::Instant::now() < deadline {
        match client.get(url).send().await {
            Ok(r) if r.status() == 200 => return Ok(r.text().await.unwrap_or_default()),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(last)
}
