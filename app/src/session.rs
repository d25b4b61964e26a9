//! Session contents, CSRF tokens and the client address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tower_sessions::Session;
use uuid::Uuid;

use crate::error::AppError;
use crate::web::AppState;

const USER: &str = "user";
const CSRF: &str = "csrf";

/// Who is signed in. `setup_only` sessions come from a temporary password
/// and may do nothing but key setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionUser {
    pub id: Uuid,
    pub username: String,
    pub setup_only: bool,
}

fn store_err(e: tower_sessions::session::Error) -> AppError {
    AppError::Internal(format!("session store: {e}"))
}

pub async fn user(session: &Session) -> Result<Option<SessionUser>, AppError> {
    session.get(USER).await.map_err(store_err)
}

/// The signed-in user of an API call that needs finished key setup:
/// 401 without a session, 403 for a temporary-password session.
pub async fn ready_user(session: &Session) -> Result<SessionUser, AppError> {
    match user(session).await? {
        Some(u) if !u.setup_only => Ok(u),
        Some(_) => Err(AppError::Forbidden),
        None => Err(AppError::Unauthorized),
    }
}

/// Starts a signed-in session under a fresh id (no fixation) with a fresh
/// CSRF token, which it returns.
pub async fn sign_in(session: &Session, user: SessionUser) -> Result<String, AppError> {
    session.cycle_id().await.map_err(store_err)?;
    session.insert(USER, user).await.map_err(store_err)?;
    let token = new_token()?;
    session.insert(CSRF, &token).await.map_err(store_err)?;
    Ok(token)
}

pub async fn sign_out(session: &Session) -> Result<(), AppError> {
    session.flush().await.map_err(store_err)
}

fn new_token() -> Result<String, AppError> {
    let bytes = kiroku_crypto::random_array::<32>().map_err(|_| AppError::internal("rng"))?;
    Ok(kiroku_crypto::b64::encode(bytes))
}

/// The session's CSRF token, created on first use (also for anonymous
/// sessions, so that the login form is protected too).
pub async fn csrf_token(session: &Session) -> Result<String, AppError> {
    if let Some(t) = session.get::<String>(CSRF).await.map_err(store_err)? {
        return Ok(t);
    }
    let token = new_token()?;
    session.insert(CSRF, &token).await.map_err(store_err)?;
    Ok(token)
}

/// Compares a presented token with the session's in constant time.
pub async fn check_csrf(session: &Session, presented: Option<&str>) -> Result<(), AppError> {
    let expected = session.get::<String>(CSRF).await.map_err(store_err)?;
    match (expected, presented) {
        (Some(e), Some(p)) if bool::from(e.as_bytes().ct_eq(p.as_bytes())) => Ok(()),
        _ => Err(AppError::Csrf),
    }
}

/// The client address: the peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

/// Extracts the client address per [`client_ip`].
pub struct ClientIp(pub IpAddr);

impl<S> FromRequestParts<S> for ClientIp
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let app = AppState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &app.config.trusted_proxies,
        )))
    }
}

/// A JSON request body checked for the session's CSRF token (header
/// `X-CSRF-Token`), with rejections turned into clear JSON errors.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| AppError::internal("session layer missing"))?;
        let presented = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok());
        check_csrf(&session, presented).await?;
        let req = Request::from_parts(parts, body);
        let axum::Json(value) = axum::Json::<T>::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge
                } else {
                    AppError::BadRequest(e.body_text())
                }
            })?;
        Ok(ApiJson(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        let direct: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(client_ip(direct, &h, &[proxy]), direct);
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A spoofed left-most entry never wins over the proxy's own append.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("garbage, 10.0.0.1"),
        );
        assert_eq!(client_ip(proxy, &h, &[proxy]), proxy);
    }
}
