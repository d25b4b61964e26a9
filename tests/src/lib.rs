//! Helpers shared by the cross-crate tests. They run against the real
//! services that `scripts/services.sh up` starts; `just test` loads the
//! generated `.data/kiroku.env` before running them.

pub mod drill;
pub mod pipeline;
pub mod standin;

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

/// A `reqwest` client builder for tests. The workspace's reqwest carries
/// rustls without a built-in crypto provider (the worker installs ring, the
/// provider the S3 client already uses), so it is installed here first.
pub fn http_client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
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
        let mut conn = sqlx::PgConnection::connect(&owner)
            .await
            .expect("connect as owner");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        let db = TestDb {
            owner_url: with_db(&owner, &name),
            app_url: with_db(env.get("KIROKU_APP_DATABASE_URL").unwrap(), &name),
            worker_url: with_db(env.get("KIROKU_WORKER_DATABASE_URL").unwrap(), &name),
            name,
        };
        kiroku_app::db::migrate(&db.owner_url)
            .await
            .expect("migrations apply");
        db
    }

    /// Drops the database, waiting for connections that are still closing
    /// (sockets of a stopped server can outlive it by a moment).
    pub async fn drop_db(self, env: &Env) {
        use sqlx::Connection;
        let owner = env.get("KIROKU_MIGRATE_DATABASE_URL").unwrap();
        let mut conn = sqlx::PgConnection::connect(owner)
            .await
            .expect("connect as owner");
        // PostgreSQL itself waits up to 5 s for other sessions to leave
        // before it refuses, so a few attempts are plenty; a connection
        // still open after that is a leak in the test, named below.
        for _ in 0..3 {
            let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
            if sqlx::query(&sql).execute(&mut conn).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let holders: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT usename::text, application_name FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        eprintln!(
            "warning: test database {} is still in use ({holders:?}); left behind",
            self.name
        );
    }
}

/// Where cargo put the binaries of this build (`target/debug`).
pub fn bin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/debug/deps")
        .to_owned()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        Service::spawn(name, args, overrides, std::process::Stdio::inherit())
    }

    /// [`Service::start`] with the service's log (stderr) written to `log`.
    pub fn start_logged(
        name: &'static str,
        overrides: &[(&str, String)],
        log: &std::path::Path,
    ) -> Service {
        let file = std::fs::File::create(log).expect("log file");
        Service::spawn(name, &[], overrides, file.into())
    }

    fn spawn(
        name: &'static str,
        args: &[&str],
        overrides: &[(&str, String)],
        stderr: std::process::Stdio,
    ) -> Service {
        let path = bin_dir().join(name);
        assert!(
            path.exists(),
            "{} is missing: run `cargo build --bins` first",
            path.display()
        );
        let mut cmd = std::process::Command::new(path);
        cmd.args(args)
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        for (k, v) in overrides {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        Service {
            child: cmd.spawn().expect("spawn service"),
            name,
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
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
    let client = http_client().build().expect("HTTP client");
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

/// The app served in-process on a free port, with its own database.
pub struct TestApp {
    pub base: String,
    pub db: TestDb,
    pub config: kiroku_app::config::AppConfig,
    pub pool: sqlx::PgPool,
    server: tokio::task::JoinHandle<()>,
    /// The pools of the workers made for this app ([`worker_for`]): closed
    /// on stop, or their idle connections would keep the database from
    /// being dropped.
    worker_pools: std::sync::Mutex<Vec<sqlx::PgPool>>,
}

/// The cheapest KDF parameters the contract allows, to keep tests quick.
pub const TEST_KDF: [(&str, &str); 3] = [
    ("KIROKU_KDF_M_KIB", "19456"),
    ("KIROKU_KDF_T", "2"),
    ("KIROKU_KDF_P", "1"),
];

impl TestApp {
    /// Starts the app with the process's configuration plus `overrides`.
    pub async fn start(overrides: &[(&str, &str)]) -> TestApp {
        let db = TestDb::create(&env()).await;
        TestApp::start_on(db, overrides).await
    }

    /// Starts the app on an existing database.
    pub async fn start_on(db: TestDb, overrides: &[(&str, &str)]) -> TestApp {
        let env = env();
        let mut pairs: Vec<(String, String)> = kiroku_runtime::KNOWN
            .iter()
            .filter_map(|k| env.get(k).map(|v| ((*k).to_owned(), v.to_owned())))
            .collect();
        let port = free_port();
        let mut set = |k: &str, v: String| {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push((k.to_owned(), v));
        };
        set("KIROKU_APP_DATABASE_URL", db.app_url.clone());
        set("KIROKU_APP_LISTEN", format!("127.0.0.1:{port}"));
        set("KIROKU_PUBLIC_URL", format!("http://127.0.0.1:{port}"));
        set("KIROKU_STORAGE", "s3".into());
        set("KIROKU_REDIS_PREFIX", format!("kiroku-test-{}", unique()));
        for (k, v) in TEST_KDF.iter().chain(overrides) {
            set(k, (*v).to_owned());
        }
        let env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let config = kiroku_app::config::AppConfig::from_env(&env).expect("app config");
        let state = kiroku_app::state(config.clone()).await.expect("app state");
        let pool = state.db.clone();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let router = kiroku_app::web::router(state);
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
            .unwrap();
        });
        TestApp {
            base: format!("http://127.0.0.1:{port}"),
            db,
            config,
            pool,
            server,
            worker_pools: Default::default(),
        }
    }

    pub async fn stop(self) {
        let db = self.stop_keep_db().await;
        db.drop_db(&env()).await;
    }

    /// Stops the server but keeps its database for another start.
    pub async fn stop_keep_db(self) -> TestDb {
        self.server.abort();
        self.pool.close().await;
        let workers = std::mem::take(&mut *self.worker_pools.lock().expect("not poisoned"));
        for pool in workers {
            pool.close().await;
        }
        self.db
    }

    /// Creates a user as the operator CLI does; returns the temporary password.
    /// A connection as the schema owner, for setting up states that no
    /// role of the product may write (a project's `stylize` after start).
    pub async fn owner_pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.db.owner_url)
            .await
            .expect("connect as owner")
    }

    pub async fn add_user(&self, name: &str) -> String {
        kiroku_app::users::add(&self.pool, name, self.config.kdf_default)
            .await
            .expect("user add")
            .temporary_password
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }
}

/// A scripted browser doing what the island does, with the native build of
/// the same crypto crate.
pub struct Browser {
    pub base: String,
    pub http: reqwest::Client,
    pub jar: std::sync::Arc<reqwest::cookie::Jar>,
    pub csrf: String,
}

#[derive(Debug, serde::Deserialize)]
pub struct PreloginAnswer {
    pub salt: String,
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let http = http_client()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browser {
            base: base.to_owned(),
            http,
            jar,
            csrf: String::new(),
        }
    }

    /// Loads a page and picks up its CSRF token.
    pub async fn page(&mut self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn open_login(&mut self) -> String {
        let html = self.page("/login").await.text().await.unwrap();
        self.csrf = meta_csrf(&html).expect("login page has a CSRF token");
        html
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("x-csrf-token", &self.csrf)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn prelogin(&self, username: &str) -> PreloginAnswer {
        let resp = self
            .post_json(
                "/api/auth/prelogin",
                &serde_json::json!({ "username": username }),
            )
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Derives `auth` (and `kek`) for `password` as the island does.
    pub async fn derive(&self, username: &str, password: &str) -> kiroku_crypto::kdf::Derived {
        let pre = self.prelogin(username).await;
        let salt = kiroku_crypto::b64::decode(&pre.salt).unwrap();
        let params = kiroku_crypto::kdf::KdfParams {
            m_kib: pre.m_kib,
            t: pre.t,
            p: pre.p,
        };
        kiroku_crypto::kdf::derive(password, &salt, params).unwrap()
    }

    /// Logs in; returns the status and the JSON answer.
    pub async fn login(&mut self, username: &str, password: &str) -> (u16, serde_json::Value) {
        let d = self.derive(username, password).await;
        let body = serde_json::json!({
            "username": username,
            "auth": kiroku_crypto::b64::encode(d.auth.as_bytes()),
        });
        let resp = self.post_json("/api/auth/login", &body).await;
        let status = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.unwrap_or_default();
        if let Some(c) = json["csrf"].as_str() {
            self.csrf = c.to_owned();
        }
        (status, json)
    }

    /// Key setup with a fresh RSA key pair; returns the key pair.
    pub async fn setup(
        &mut self,
        user_id: &str,
        password: &str,
        params: kiroku_crypto::kdf::KdfParams,
    ) -> (u16, kiroku_crypto::userkey::KeyPair) {
        let salt = kiroku_crypto::random_array::<16>().unwrap();
        let d = kiroku_crypto::kdf::derive(password, &salt, params).unwrap();
        let pair = kiroku_crypto::userkey::generate().unwrap();
        let wrapped = kiroku_crypto::userkey::wrap(&d.kek, user_id, &pair.private_pkcs8).unwrap();
        use kiroku_crypto::b64::encode;
        let body = serde_json::json!({
            "public_key": encode(&pair.public_spki),
            "private_key_enc": encode(&wrapped),
            "salt": encode(salt),
            "m_kib": params.m_kib, "t": params.t, "p": params.p,
            "auth": encode(d.auth.as_bytes()),
        });
        let resp = self.post_json("/api/auth/setup", &body).await;
        let status = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.unwrap_or_default();
        if let Some(c) = json["csrf"].as_str() {
            self.csrf = c.to_owned();
        }
        (status, pair)
    }

    /// The session cookie's current value.
    pub fn session_cookie(&self) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let header = self.jar.cookies(&self.base.parse().unwrap())?;
        header
            .to_str()
            .ok()?
            .split(';')
            .find_map(|c| c.trim().strip_prefix("kiroku_session=").map(str::to_owned))
    }
}

/// The CSRF token in a page's `<meta name="csrf-token">`.
pub fn meta_csrf(html: &str) -> Option<String> {
    let i = html.find("name=\"csrf-token\" content=\"")? + "name=\"csrf-token\" content=\"".len();
    let j = html[i..].find('"')?;
    Some(html[i..i + j].to_owned())
}

impl TestApp {
    /// A user who has completed key setup, signed in in a fresh browser.
    pub async fn ready_browser(
        &self,
        name: &str,
    ) -> (Browser, String, kiroku_crypto::userkey::KeyPair) {
        let temp = self.add_user(name).await;
        let mut b = self.browser();
        b.open_login().await;
        let (status, answer) = b.login(name, &temp).await;
        assert_eq!(status, 200, "{answer}");
        let user_id = answer["user_id"].as_str().unwrap().to_owned();
        let (status, pair) = b
            .setup(
                &user_id,
                "a performer's long password",
                kiroku_crypto::kdf::KdfParams::FLOOR,
            )
            .await;
        assert_eq!(status, 200);
        (b, user_id, pair)
    }
}

/// Where the test fixtures (speech recordings, photos) live.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A worker (database role, queue, storage) for `app`'s database, with the
/// given speech engine, as the worker binary would build it.
pub async fn worker_for(
    app: &TestApp,
    transcriber: Option<kiroku_pipeline::process::SharedTranscriber>,
) -> kiroku_pipeline::WorkerState {
    worker_with(app, transcriber, &[]).await
}

/// [`worker_for`] with more settings. With `KIROKU_SPEECH_ENGINE=openai`
/// among them and no `transcriber`, the configured remote engine is used.
pub async fn worker_with(
    app: &TestApp,
    transcriber: Option<kiroku_pipeline::process::SharedTranscriber>,
    settings: &[(&str, &str)],
) -> kiroku_pipeline::WorkerState {
    let e = env();
    let mut pairs: Vec<(String, String)> = kiroku_runtime::KNOWN
        .iter()
        .filter_map(|k| e.get(k).map(|v| ((*k).to_owned(), v.to_owned())))
        .collect();
    pairs.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "KIROKU_STORAGE" | "KIROKU_WORKER_DATABASE_URL" | "KIROKU_REDIS_PREFIX"
        ) && !settings.iter().any(|(s, _)| s == k)
    });
    pairs.extend(
        settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    pairs.push(("KIROKU_STORAGE".into(), "s3".into()));
    pairs.push((
        "KIROKU_WORKER_DATABASE_URL".into(),
        app.db.worker_url.clone(),
    ));
    pairs.push((
        "KIROKU_REDIS_PREFIX".into(),
        app.config.redis_prefix.clone(),
    ));
    let wenv = Env::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let config = kiroku_pipeline::WorkerConfig::from_env(&wenv).expect("worker config");
    let remote_speech = config.openai_speech.is_some();
    let mut state = kiroku_pipeline::connect(config.clone())
        .await
        .expect("worker connects");
    app.worker_pools
        .lock()
        .expect("not poisoned")
        .push(state.db.clone());
    state.transcriber = match transcriber {
        None if remote_speech => kiroku_pipeline::load_speech(&config)
            .await
            .expect("speech engine"),
        t => t,
    };
    state
}

/// A stand-in for the speech engine that says exactly the given sentences,
/// spread evenly over each segment. Tests of ordering, escaping, sealing and
/// leaks need to know the exact text; the real engine is tested on its own
/// and in the end-to-end browser test.
pub struct Scripted(pub Vec<String>);

impl Scripted {
    pub fn new(lines: &[&str]) -> Scripted {
        Scripted(lines.iter().map(|l| (*l).to_owned()).collect())
    }
}

impl kiroku_pipeline::process::Transcriber for Scripted {
    fn transcribe(
        &self,
        samples: &[f32],
        _language: &str,
    ) -> anyhow::Result<kiroku_pipeline::process::Transcript> {
        let ms = (samples.len() * 1000 / 16_000) as i64;
        let step = ms / self.0.len().max(1) as i64;
        let lines = self
            .0
            .iter()
            .enumerate()
            .map(|(i, t)| kiroku_pipeline::process::compose::Line {
                start_ms: i as i64 * step,
                end_ms: (i as i64 + 1) * step,
                text: t.clone(),
            })
            .collect();
        Ok(kiroku_pipeline::process::Transcript {
            language: Some("es".into()),
            lines,
        })
    }
}
