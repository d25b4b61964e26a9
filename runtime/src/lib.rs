//! Reading `KIROKU_*` configuration from the environment.
//!
//! Each binary builds its own typed configuration with an [`Env`]; every
//! error names the variable at fault, and variables that no binary knows
//! are reported so that a typo does not silently fall back to a default.

pub mod http;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use thiserror::Error;

/// Every variable any Kiroku binary reads. `.env.example` documents each
/// one; a test keeps the two lists equal.
pub const KNOWN: &[&str] = &[
    "KIROKU_LOG",
    "KIROKU_LOG_FORMAT",
    "KIROKU_APP_LISTEN",
    "KIROKU_WORKER_LISTEN",
    "KIROKU_EXPORT_LISTEN",
    "KIROKU_PUBLIC_URL",
    "KIROKU_EXPORT_PUBLIC_URL",
    "KIROKU_APP_DATABASE_URL",
    "KIROKU_APP_DATABASE_POOL",
    "KIROKU_WORKER_DATABASE_URL",
    "KIROKU_MIGRATE_DATABASE_URL",
    "KIROKU_SESSION_REDIS_URL",
    "KIROKU_QUEUE_REDIS_URL",
    "KIROKU_REDIS_PREFIX",
    "KIROKU_STORAGE",
    "KIROKU_STORAGE_DIR",
    "KIROKU_S3_ENDPOINT",
    "KIROKU_S3_REGION",
    "KIROKU_S3_BUCKET",
    "KIROKU_APP_S3_ACCESS_KEY_ID",
    "KIROKU_APP_S3_SECRET_ACCESS_KEY",
    "KIROKU_WORKER_S3_ACCESS_KEY_ID",
    "KIROKU_WORKER_S3_SECRET_ACCESS_KEY",
    "KIROKU_EXPORT_S3_ACCESS_KEY_ID",
    "KIROKU_EXPORT_S3_SECRET_ACCESS_KEY",
    "KIROKU_EXPORT_KEYS",
    "KIROKU_EXPORT_SIGNING_KID",
    "KIROKU_EXPORT_MAX_TTL",
    "KIROKU_EXPORT_TOKEN_TTL",
    "KIROKU_PRELOGIN_SECRET",
    "KIROKU_KDF_M_KIB",
    "KIROKU_KDF_T",
    "KIROKU_KDF_P",
    "KIROKU_TRUSTED_PROXIES",
    "KIROKU_LOGIN_LIMIT_PER_ACCOUNT",
    "KIROKU_LOGIN_LIMIT_PER_ADDRESS",
    "KIROKU_SESSION_HOURS",
    "KIROKU_LOGIN_WINDOW_SECS",
    "KIROKU_MAX_CHUNK_BYTES",
    "KIROKU_MAX_PHOTO_BYTES",
    "KIROKU_MAX_RECORDING_MINUTES",
    "KIROKU_MAX_CONCURRENT_RECORDINGS",
    "KIROKU_WS_IDLE_SECS",
    "KIROKU_QUEUE_VISIBILITY_SECS",
    "KIROKU_QUEUE_MAX_ATTEMPTS",
    "KIROKU_QUEUE_BACKOFF_SECS",
    "KIROKU_WORKER_CONCURRENCY",
    "KIROKU_CACHE_DIR",
    "KIROKU_WHISPER_MODEL",
    "KIROKU_WHISPER_THREADS",
    "KIROKU_SPEECH_ENGINE",
    "KIROKU_OPENAI_BASE_URL",
    "KIROKU_OPENAI_API_KEY",
    "KIROKU_OPENAI_SPEECH_MODEL",
    "KIROKU_OPENAI_SPEECH_FORMAT",
    "KIROKU_OPENAI_IMAGE_MODEL",
    "KIROKU_OPENAI_CHAT_MODEL",
    "KIROKU_GEMINI_BASE_URL",
    "KIROKU_GEMINI_API_KEY",
    "KIROKU_GEMINI_IMAGE_MODEL",
    "KIROKU_STYLE_ENGINE",
    "KIROKU_STYLE_DAILY_QUOTA",
    "KIROKU_REWRITE",
    "KIROKU_REMOTE_TIMEOUT_SECS",
    "KIROKU_REMOTE_ATTEMPTS",
    "KIROKU_REMOTE_BACKOFF_MS",
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(String),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

impl ConfigError {
    pub fn invalid(name: &str, reason: impl Display) -> Self {
        ConfigError::Invalid {
            name: name.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A snapshot of the `KIROKU_*` variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// Reads the process environment. Values that are not UTF-8 are kept
    /// out and reported as invalid when asked for.
    pub fn from_process() -> Env {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                k.starts_with("KIROKU_")
                    .then(|| (k, v.into_string().unwrap_or_else(|_| "\u{fffd}".into())))
            })
            .collect();
        Env { vars }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// The value, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(KNOWN.contains(&name), "{name} missing from settings::KNOWN");
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name)
            .map(str::to_owned)
            .ok_or_else(|| ConfigError::Missing(name.to_owned()))
    }

    pub fn or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// Parses the value with `FromStr`, or returns `default` when unset.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e| ConfigError::invalid(name, e)),
        }
    }

    /// Set `KIROKU_*` variables that no binary reads (typos, leftovers).
    pub fn unknown(&self) -> Vec<&str> {
        self.vars
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN.contains(k))
            .collect()
    }

    /// Logs a warning for each unknown variable.
    pub fn warn_unknown(&self) {
        for name in self.unknown() {
            tracing::warn!(variable = name, "unknown KIROKU_ variable ignored");
        }
    }
}

/// Starts `tracing` for a binary: `KIROKU_LOG` is the filter (default
/// `info`), `KIROKU_LOG_FORMAT=json` switches to one JSON object per line.
pub fn init_tracing(env: &Env) {
    use tracing_subscriber::EnvFilter;
    // async-openai logs whole response bodies when one does not parse, and
    // a body can hold transcript text: it is silenced whatever KIROKU_LOG
    // says (Kiroku logs those failures itself, without the body).
    let filter =
        EnvFilter::try_new(env.or("KIROKU_LOG", "info,sqlx=warn,aws=warn,whisper_rs=warn"))
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .add_directive("async_openai=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let result = if env.get("KIROKU_LOG_FORMAT") == Some("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests start several services in one process) is fine.
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_variable() {
        let env = Env::from_pairs([("KIROKU_KDF_T", "three")]);
        let err = env.parse_or("KIROKU_KDF_T", 3u32).unwrap_err();
        assert!(
            err.to_string().starts_with("KIROKU_KDF_T is invalid"),
            "{err}"
        );
        let err = env.required("KIROKU_PRELOGIN_SECRET").unwrap_err();
        assert_eq!(
            err.to_string(),
            "KIROKU_PRELOGIN_SECRET is required but not set"
        );
    }

    #[test]
    fn empty_counts_as_unset_and_defaults_apply() {
        let env = Env::from_pairs([("KIROKU_KDF_T", "")]);
        assert_eq!(env.parse_or("KIROKU_KDF_T", 3u32), Ok(3));
    }

    #[test]
    fn unknown_variables_are_listed() {
        let env = Env::from_pairs([("KIROKU_LOG", "debug"), ("KIROKU_LGO", "x")]);
        assert_eq!(env.unknown(), vec!["KIROKU_LGO"]);
    }

    #[test]
    fn env_example_documents_exactly_the_known_variables() {
        let example = include_str!("../../.env.example");
        let documented: Vec<&str> = example
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .filter(|k| k.starts_with("KIROKU_"))
            .collect();
        for k in KNOWN {
            assert!(
                documented.contains(k),
                "{k} is not documented in .env.example"
            );
        }
        for k in &documented {
            assert!(
                KNOWN.contains(k),
                "{k} is documented but no binary reads it"
            );
        }
    }
}
