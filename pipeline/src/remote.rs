//! What the optional remote engines share: their settings, an HTTP client
//! with timeouts, retries with backoff on 429, 5xx, timeouts and dropped
//! connections, and errors that name what went wrong without repeating
//! anything the service sent back. An answer can hold transcript text or a
//! performer's method, and errors end up in logs and in the project row.
//!
//! Nothing here runs unless an operator chose a remote engine; the default
//! deployment never opens a connection to anyone.

use std::future::Future;
use std::time::Duration;

use async_openai::error::OpenAIError;
use kiroku_runtime::{ConfigError, Env};

/// An API key: printed as `***` by `Debug`, so that no configuration dump
/// or error report can show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> ApiKey {
        ApiKey(key)
    }

    /// The key itself, for the request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Timeouts and retries for every remote call.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// For one attempt, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles after each failure.
    pub backoff: Duration,
}

impl RemoteConfig {
    pub fn from_env(env: &Env) -> Result<RemoteConfig, ConfigError> {
        let timeout: u64 = env.parse_or("KIROKU_REMOTE_TIMEOUT_SECS", 120)?;
        let attempts: u32 = env.parse_or("KIROKU_REMOTE_ATTEMPTS", 4)?;
        let backoff: u64 = env.parse_or("KIROKU_REMOTE_BACKOFF_MS", 1000)?;
        if timeout == 0 {
            return Err(ConfigError::invalid(
                "KIROKU_REMOTE_TIMEOUT_SECS",
                "must be at least 1",
            ));
        }
        if attempts == 0 || attempts > 20 {
            return Err(ConfigError::invalid(
                "KIROKU_REMOTE_ATTEMPTS",
                "must be between 1 and 20",
            ));
        }
        Ok(RemoteConfig {
            timeout: Duration::from_secs(timeout),
            attempts,
            backoff: Duration::from_millis(backoff),
        })
    }
}

/// A remote call that did not give a usable answer. The messages are fit
/// for a log line and for the performer's project page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("the {service} answered HTTP {status}")]
    Status { service: &'static str, status: u16 },
    #[error("the {service} did not answer in time")]
    Timeout { service: &'static str },
    #[error("the {service} could not be reached")]
    Unreachable { service: &'static str },
    #[error("the {service} sent an answer that is not in its documented format")]
    Malformed { service: &'static str },
    #[error("the {service}'s answer was refused: {reason}")]
    Rejected {
        service: &'static str,
        reason: &'static str,
    },
    #[error("the {service} is not configured: {reason}")]
    Misconfigured {
        service: &'static str,
        reason: &'static str,
    },
}

impl RemoteError {
    /// Worth another attempt: the service was busy, failing or slow, or
    /// the connection dropped.
    pub fn transient(&self) -> bool {
        match self {
            RemoteError::Status { status, .. } => *status == 429 || *status >= 500,
            RemoteError::Timeout { .. } | RemoteError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// From a `reqwest` error, keeping only its kind.
    pub fn from_http(service: &'static str, e: &reqwest::Error) -> RemoteError {
        if e.is_timeout() {
            RemoteError::Timeout { service }
        } else if let Some(status) = e.status() {
            RemoteError::Status {
                service,
                status: status.as_u16(),
            }
        } else if e.is_decode() {
            RemoteError::Malformed { service }
        } else {
            // Connect errors, a body cut short, a reset: all transient.
            RemoteError::Unreachable { service }
        }
    }

    /// From an `async-openai` error, keeping only its kind: its display
    /// form can include the body the service sent.
    pub fn from_openai(service: &'static str, e: &OpenAIError) -> RemoteError {
        match e {
            OpenAIError::ApiError(api) => RemoteError::Status {
                service,
                status: api.status_code.as_u16(),
            },
            OpenAIError::Reqwest(e) => RemoteError::from_http(service, e),
            OpenAIError::InvalidArgument(_) => RemoteError::Misconfigured {
                service,
                reason: "the request could not be built",
            },
            _ => RemoteError::Malformed { service },
        }
    }
}

/// Calls `call` until it succeeds, fails for good, or has used
/// `config.attempts`; waits `backoff`, then twice that, and so on (at most
/// 30 s) between attempts.
pub async fn with_retries<T, F, Fut>(
    config: &RemoteConfig,
    service: &'static str,
    mut call: F,
) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RemoteError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if e.transient() && attempt < config.attempts => {
                let wait = config
                    .backoff
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(Duration::from_secs(30));
                tracing::warn!(
                    service,
                    error = %e,
                    attempt,
                    retry_in_ms = wait.as_millis() as u64,
                    "remote call failed; trying again"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The HTTP client of the remote engines: rustls on ring with the system's
/// roots, a timeout per attempt, no proxy guessing beyond the environment.
pub fn http_client(config: &RemoteConfig) -> anyhow::Result<reqwest::Client> {
    // The process-wide provider; a second install (tests) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(15)))
        .user_agent(concat!("kiroku/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// An OpenAI-compatible client for `base_url` (e.g.
/// `https://api.openai.com/v1`, or a self-hosted server's `/v1`).
pub fn openai_client(
    config: &RemoteConfig,
    base_url: &str,
    api_key: &ApiKey,
) -> anyhow::Result<async_openai::Client<async_openai::config::OpenAIConfig>> {
    let settings = async_openai::config::OpenAIConfig::new()
        .with_api_base(base_url.trim_end_matches('/'))
        .with_api_key(api_key.expose());
    let http = http_client(config)?;
    // The plain transport, without async-openai's own retry layer: retries
    // are [`with_retries`]'s alone, so `KIROKU_REMOTE_ATTEMPTS` means what it
    // says and timeouts are retried too.
    Ok(async_openai::Client::with_config(settings)
        .with_http_client(http.clone())
        .with_http_service(async_openai::middleware::ReqwestService::new(http)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(attempts: u32) -> RemoteConfig {
        RemoteConfig {
            timeout: Duration::from_secs(1),
            attempts,
            backoff: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_attempts_run_out() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(&quick(3), "test service", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(RemoteError::Status {
                service: "test service",
                status: 503,
            })
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            result.unwrap_err().to_string(),
            "the test service answered HTTP 503"
        );
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried_and_success_ends_the_loop() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(&quick(5), "s", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(RemoteError::Status {
                service: "s",
                status: 401,
            })
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let result = with_retries(&quick(5), "s", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 2 {
                Err(RemoteError::Timeout { service: "s" })
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(result, Ok(2));
    }

    #[test]
    fn keys_never_print() {
        let key = ApiKey::new("sk-very-secret".into());
        assert_eq!(format!("{key:?}"), "***");
        assert_eq!(key.expose(), "sk-very-secret");
    }

    #[test]
    fn config_rejects_nonsense() {
        let env = Env::from_pairs([("KIROKU_REMOTE_ATTEMPTS", "0")]);
        assert!(RemoteConfig::from_env(&env).is_err());
        let env = Env::from_pairs([("KIROKU_REMOTE_TIMEOUT_SECS", "0")]);
        assert!(RemoteConfig::from_env(&env).is_err());
        let c = RemoteConfig::from_env(&Env::from_pairs([])).unwrap();
        assert_eq!((c.attempts, c.timeout.as_secs()), (4, 120));
    }
}
