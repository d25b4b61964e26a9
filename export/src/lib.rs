//! The export service: streams one sealed artifact per valid token.
//!
//! It holds a get-only credential for `final/v1/` and the token key ring,
//! nothing else: no database, no user keys, never plaintext. Each request
//! presents `Authorization: Bearer <token>` for `GET /objects/<object key>`;
//! the token must name exactly that key (CRYPTO.md §5).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kiroku_crypto::token::{self, KeyRing, Policy, TokenError};
use kiroku_runtime::{ConfigError, Env};
use kiroku_storage::{ByteRange, FinalReader, Role, StorageConfig, StorageError, Store};

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub listen: SocketAddr,
    pub app_origin: String,
    pub ring: KeyRing,
    pub policy: Policy,
    pub storage: StorageConfig,
    /// Requests per second per client address (burst of ten times that).
    pub rate_per_second: u32,
}

impl ExportConfig {
    pub fn from_env(env: &Env) -> Result<ExportConfig, ConfigError> {
        let ring = KeyRing::parse(&env.required("KIROKU_EXPORT_KEYS")?)
            .map_err(|e| ConfigError::invalid("KIROKU_EXPORT_KEYS", e))?;
        let max_ttl: i64 = env.parse_or("KIROKU_EXPORT_MAX_TTL", 300)?;
        if !(10..=3600).contains(&max_ttl) {
            return Err(ConfigError::invalid(
                "KIROKU_EXPORT_MAX_TTL",
                "must be 10–3600 seconds",
            ));
        }
        let storage = StorageConfig::from_env(env)?;
        storage.require(Role::Export)?;
        let public = env.or("KIROKU_PUBLIC_URL", "http://127.0.0.1:8080");
        Ok(ExportConfig {
            listen: env.parse_or(
                "KIROKU_EXPORT_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 8081)),
            )?,
            app_origin: origin_of(&public).to_owned(),
            ring,
            policy: Policy { max_ttl, skew: 30 },
            storage,
            rate_per_second: 20,
        })
    }
}

fn origin_of(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

#[derive(Clone)]
pub struct ExportState {
    config: Arc<ExportConfig>,
    store: FinalReader,
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ExportState {
    pub fn new(config: ExportConfig) -> Result<ExportState, StorageError> {
        let store = FinalReader::new(Store::open(&config.storage, Role::Export)?);
        let rate = NonZeroU32::new(config.rate_per_second.max(1)).expect("max(1)");
        let burst = NonZeroU32::new(config.rate_per_second.max(1) * 10).expect("non-zero");
        let limiter = Arc::new(RateLimiter::keyed(
            Quota::per_second(rate).allow_burst(burst),
        ));
        Ok(ExportState {
            config: Arc::new(config),
            store,
            limiter,
        })
    }
}

pub fn router(state: ExportState) -> Router {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/objects/{*key}",
            get(object).head(object).options(preflight),
        )
        .with_state(state);
    kiroku_runtime::http::observe(app)
}

async fn readyz(State(s): State<ExportState>) -> impl IntoResponse {
    let store = s.store.clone();
    kiroku_runtime::http::readiness(vec![(
        "storage",
        Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) }),
    )])
    .await
}

/// Why a request was refused; each has its own status and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoToken,
    Token(TokenError),
    RateLimited,
    NotFound,
    BadRange,
    Unavailable,
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::NoToken => StatusCode::UNAUTHORIZED,
            Refusal::Token(TokenError::Malformed) => StatusCode::BAD_REQUEST,
            Refusal::Token(_) => StatusCode::FORBIDDEN,
            Refusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::BadRange => StatusCode::RANGE_NOT_SATISFIABLE,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Refusal::NoToken => "token_missing",
            Refusal::Token(e) => e.code(),
            Refusal::RateLimited => "rate_limited",
            Refusal::NotFound => "not_found",
            Refusal::BadRange => "range_not_satisfiable",
            Refusal::Unavailable => "unavailable",
        }
    }
}

fn cors(config: &ExportConfig, headers: &HeaderMap, resp: &mut Response) {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if origin == Some(config.app_origin.as_str()) {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(&config.app_origin).expect("origin is a header value"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("content-length, content-range, content-disposition"),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
}

async fn preflight(State(s): State<ExportState>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    cors(&s.config, &headers, &mut resp);
    if resp
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, range"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    resp
}

fn refuse(config: &ExportConfig, headers: &HeaderMap, why: Refusal) -> Response {
    let body = format!("{{\"error\":\"{}\"}}", why.code());
    let mut resp = (
        why.status(),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    harden(resp.headers_mut());
    cors(config, headers, &mut resp);
    resp
}

fn harden(h: &mut HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses a single `bytes=` range. Anything else (several ranges, other
/// units) is ignored, as HTTP allows, and the whole object is served.
fn parse_range(value: &str, size: u64) -> Option<Result<ByteRange, ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let suffix: u64 = b.parse().ok()?;
        if suffix == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok(ByteRange {
            start: size.saturating_sub(suffix),
            end: None,
        }));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok()?)
    };
    if end.is_some_and(|e| e < start) || start >= size {
        return Some(Err(()));
    }
    Some(Ok(ByteRange { start, end }))
}

/// A filename safe inside a quoted header parameter, with the exact UTF-8
/// name in `filename*`.
fn disposition(filename: &str) -> HeaderValue {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._- ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let encoded: String = filename
        .bytes()
        .take(300)
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

async fn object(
    State(s): State<ExportState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let cfg = &s.config;
    // The raw path, undecoded: the token must name it byte for byte.
    let key = req
        .uri()
        .path()
        .strip_prefix("/objects/")
        .unwrap_or("")
        .to_owned();
    let head_only = req.method() == Method::HEAD;

    if s.limiter.check_key(&peer.ip()).is_err() {
        tracing::warn!(target: "audit", outcome = "rate_limited", client = %peer.ip());
        return refuse(cfg, &headers, Refusal::RateLimited);
    }
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        tracing::info!(target: "audit", outcome = Refusal::NoToken.code());
        return refuse(cfg, &headers, Refusal::NoToken);
    };
    let (kid, claims) = match token::verify(&cfg.ring, cfg.policy, token.trim(), &key, now()) {
        Ok(ok) => ok,
        Err(e) => {
            tracing::info!(target: "audit", outcome = e.code());
            return refuse(cfg, &headers, Refusal::Token(e));
        }
    };
    let audit = |outcome: &str, size: u64| {
        tracing::info!(target: "audit", kid = %kid, artifact_id = %claims.artifact_id, outcome, size);
    };

    let size = match s.store.head(&key).await {
        Ok(size) => size,
        Err(StorageError::NotFound) => {
            audit("not_found", 0);
            return refuse(cfg, &headers, Refusal::NotFound);
        }
        Err(e) => {
            tracing::error!(error = %e, "storage head failed");
            audit("unavailable", 0);
            return refuse(cfg, &headers, Refusal::Unavailable);
        }
    };
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(v) => match parse_range(v, size) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(())) => {
                audit("bad_range", 0);
                let mut resp = refuse(cfg, &headers, Refusal::BadRange);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
    };

    let (status, start, len, body) = if head_only {
        (StatusCode::OK, 0, size, Body::empty())
    } else {
        match s.store.get(&key, range).await {
            Ok(obj) => {
                let status = if range.is_some() {
                    StatusCode::PARTIAL_CONTENT
                } else {
                    StatusCode::OK
                };
                (status, obj.start, obj.len, Body::from_stream(obj.body))
            }
            Err(StorageError::NotFound) => {
                audit("not_found", 0);
                return refuse(cfg, &headers, Refusal::NotFound);
            }
            Err(StorageError::InvalidRange) => {
                audit("bad_range", 0);
                return refuse(cfg, &headers, Refusal::BadRange);
            }
            Err(e) => {
                tracing::error!(error = %e, "storage get failed");
                audit("unavailable", 0);
                return refuse(cfg, &headers, Refusal::Unavailable);
            }
        }
    };
    audit(if head_only { "head" } else { "served" }, len);

    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_DISPOSITION, disposition(&claims.filename));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {start}-{}/{size}",
            start + len.saturating_sub(1)
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    harden(h);
    cors(cfg, &headers, &mut resp);
    resp
}

/// Runs the service until SIGINT/SIGTERM.
pub async fn serve(config: ExportConfig) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = ExportState::new(config)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listen, "export service listening");
    kiroku_runtime::http::serve(listener, router(state)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_http() {
        let r = |s, e| Some(Ok(ByteRange { start: s, end: e }));
        assert_eq!(parse_range("bytes=0-9", 100), r(0, Some(9)));
        assert_eq!(parse_range("bytes=10-", 100), r(10, None));
        assert_eq!(parse_range("bytes=-10", 100), r(90, None));
        assert_eq!(parse_range("bytes=-500", 100), r(0, None));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=9-3", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=x-y", 100), None);
    }

    #[test]
    fn disposition_never_breaks_the_header() {
        let v = disposition("guion \"final\"\r\nX: y.pdf");
        let s = v.to_str().unwrap();
        assert!(
            s.starts_with("attachment; filename=\"guion _final___X_ y.pdf\""),
            "{s}"
        );
        assert!(!s.contains('\n'));
        let v = disposition("guión.pdf");
        assert!(
            v.to_str()
                .unwrap()
                .contains("filename*=UTF-8''gui%C3%B3n.pdf")
        );
    }
}
