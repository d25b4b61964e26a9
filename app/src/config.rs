//! The app's typed configuration, read once at start-up.

use std::net::{IpAddr, SocketAddr};

use kiroku_crypto::kdf::KdfParams;
use kiroku_crypto::token::KeyRing;
use kiroku_runtime::{ConfigError, Env};
use kiroku_storage::StorageConfig;

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub listen: SocketAddr,
    pub public_url: String,
    pub export_public_url: String,
    pub database_url: String,
    /// The most connections the app holds open to PostgreSQL.
    pub database_pool: u32,
    pub session_redis_url: String,
    pub queue_redis_url: String,
    pub storage: StorageConfig,
    pub export_keys: Option<ExportSigning>,
    pub prelogin_secret: Vec<u8>,
    pub kdf_default: KdfParams,
    pub trusted_proxies: Vec<IpAddr>,
    pub login_limit_per_account: u32,
    pub login_limit_per_address: u32,
    pub session_hours: i64,
    /// The window over which login attempts are counted, seconds.
    pub login_window_secs: i64,
    /// Prefix of the app's own Redis keys (rate limits), so deployments can share a server.
    pub redis_prefix: String,
    pub limits: Limits,
}

/// Recording limits, each with a clear message when reached.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_chunk_bytes: usize,
    pub max_photo_bytes: usize,
    pub max_recording_secs: i64,
    pub max_concurrent_recordings: i64,
    /// A recording socket that sends nothing for this long is closed.
    pub ws_idle_secs: u64,
}

/// The ring the app signs export tokens with, and which kid it uses.
#[derive(Debug, Clone)]
pub struct ExportSigning {
    pub ring: KeyRing,
    pub kid: String,
    pub token_ttl: i64,
}

impl AppConfig {
    pub fn from_env(env: &Env) -> Result<AppConfig, ConfigError> {
        let listen = env.parse_or(
            "KIROKU_APP_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        )?;
        let public_url = env.or("KIROKU_PUBLIC_URL", &format!("http://{listen}"));
        check_url("KIROKU_PUBLIC_URL", &public_url)?;
        let export_public_url = env.or("KIROKU_EXPORT_PUBLIC_URL", "http://127.0.0.1:8081");
        check_url("KIROKU_EXPORT_PUBLIC_URL", &export_public_url)?;

        let prelogin_secret = match env.get("KIROKU_PRELOGIN_SECRET") {
            Some(s) => kiroku_crypto::b64::decode(s)
                .ok()
                .filter(|b| b.len() >= 32)
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "KIROKU_PRELOGIN_SECRET",
                        "must be ≥ 32 bytes of base64url",
                    )
                })?,
            None => return Err(ConfigError::Missing("KIROKU_PRELOGIN_SECRET".into())),
        };

        let kdf_default = KdfParams {
            m_kib: env.parse_or("KIROKU_KDF_M_KIB", KdfParams::DEFAULT.m_kib)?,
            t: env.parse_or("KIROKU_KDF_T", KdfParams::DEFAULT.t)?,
            p: env.parse_or("KIROKU_KDF_P", KdfParams::DEFAULT.p)?,
        };
        kdf_default
            .check()
            .map_err(|e| ConfigError::invalid("KIROKU_KDF_M_KIB", e))?;

        let trusted_proxies = match env.get("KIROKU_TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|e| ConfigError::invalid("KIROKU_TRUSTED_PROXIES", e))
                })
                .collect::<Result<_, _>>()?,
        };

        Ok(AppConfig {
            listen,
            public_url,
            export_public_url,
            database_url: env.or(
                "KIROKU_APP_DATABASE_URL",
                "postgres://kiroku_app@127.0.0.1:5432/kiroku",
            ),
            database_pool: env.parse_or("KIROKU_APP_DATABASE_POOL", 20)?,
            session_redis_url: env.or("KIROKU_SESSION_REDIS_URL", "redis://127.0.0.1:6379/0"),
            queue_redis_url: env.or("KIROKU_QUEUE_REDIS_URL", "redis://127.0.0.1:6379/1"),
            storage: StorageConfig::from_env(env)?,
            export_keys: export_signing(env)?,
            prelogin_secret,
            kdf_default,
            trusted_proxies,
            login_limit_per_account: env.parse_or("KIROKU_LOGIN_LIMIT_PER_ACCOUNT", 10)?,
            login_limit_per_address: env.parse_or("KIROKU_LOGIN_LIMIT_PER_ADDRESS", 50)?,
            session_hours: env.parse_or("KIROKU_SESSION_HOURS", 12)?,
            login_window_secs: env.parse_or("KIROKU_LOGIN_WINDOW_SECS", 900)?,
            redis_prefix: env.or("KIROKU_REDIS_PREFIX", "kiroku"),
            limits: Limits {
                max_chunk_bytes: env.parse_or("KIROKU_MAX_CHUNK_BYTES", 4 * 1024 * 1024)?,
                max_photo_bytes: env.parse_or("KIROKU_MAX_PHOTO_BYTES", 20 * 1024 * 1024)?,
                max_recording_secs: env.parse_or::<i64>("KIROKU_MAX_RECORDING_MINUTES", 180)? * 60,
                max_concurrent_recordings: env.parse_or("KIROKU_MAX_CONCURRENT_RECORDINGS", 2)?,
                ws_idle_secs: env.parse_or("KIROKU_WS_IDLE_SECS", 60)?,
            },
        })
    }

    /// Cookies get `Secure` when browsers reach the app over TLS.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// The browser-visible origin (scheme://host[:port]) of the app.
    pub fn origin(&self) -> &str {
        origin_of(&self.public_url)
    }
}

/// `scheme://host[:port]` of a URL, without path.
pub fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn check_url(name: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            name,
            "must start with http:// or https://",
        ))
    }
}

fn export_signing(env: &Env) -> Result<Option<ExportSigning>, ConfigError> {
    let Some(spec) = env.get("KIROKU_EXPORT_KEYS") else {
        return Ok(None);
    };
    let ring = KeyRing::parse(spec).map_err(|e| ConfigError::invalid("KIROKU_EXPORT_KEYS", e))?;
    let kid = match env.get("KIROKU_EXPORT_SIGNING_KID") {
        Some(k) => k.to_owned(),
        None => match ring.kids().as_slice() {
            [only] => (*only).to_owned(),
            _ => return Err(ConfigError::Missing("KIROKU_EXPORT_SIGNING_KID".into())),
        },
    };
    if !ring.contains(&kid) {
        return Err(ConfigError::invalid(
            "KIROKU_EXPORT_SIGNING_KID",
            "names a kid that is not in KIROKU_EXPORT_KEYS",
        ));
    }
    let token_ttl: i64 = env.parse_or("KIROKU_EXPORT_TOKEN_TTL", 120)?;
    if !(10..=3600).contains(&token_ttl) {
        return Err(ConfigError::invalid(
            "KIROKU_EXPORT_TOKEN_TTL",
            "must be 10–3600 seconds",
        ));
    }
    Ok(Some(ExportSigning {
        ring,
        kid,
        token_ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn defaults_need_only_the_prelogin_secret() {
        let env = Env::from_pairs([("KIROKU_PRELOGIN_SECRET", SECRET)]);
        let cfg = AppConfig::from_env(&env).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.kdf_default, KdfParams::DEFAULT);
        assert!(!cfg.secure_cookies());
        assert_eq!(cfg.origin(), "http://127.0.0.1:8080");
    }

    #[test]
    fn weak_kdf_default_is_refused() {
        let env = Env::from_pairs([("KIROKU_PRELOGIN_SECRET", SECRET), ("KIROKU_KDF_T", "1")]);
        let err = AppConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("KIROKU_KDF"), "{err}");
    }

    #[test]
    fn signing_kid_must_be_in_the_ring() {
        let env = Env::from_pairs([
            ("KIROKU_PRELOGIN_SECRET", SECRET),
            (
                "KIROKU_EXPORT_KEYS",
                "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
            ("KIROKU_EXPORT_SIGNING_KID", "k2"),
        ]);
        let err = AppConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.starts_with("KIROKU_EXPORT_SIGNING_KID"), "{err}");
    }

    #[test]
    fn origin_drops_the_path() {
        assert_eq!(origin_of("https://k.example/app/"), "https://k.example");
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }
}
