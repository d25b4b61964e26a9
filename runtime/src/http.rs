//! HTTP plumbing shared by the three binaries: request ids, one tracing
//! span per request, health endpoints and graceful shutdown.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Request};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` so that every request gets an `x-request-id` (a fresh
/// UUID; one sent by the client is replaced, as it cannot be trusted), a
/// span carrying it, and the same id on the response.
///
/// The span records method and path only: query strings may carry tokens.
pub fn observe(router: Router) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO));
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(tower::util::MapRequestLayer::new(
            |mut req: Request<axum::body::Body>| {
                req.headers_mut().remove(&REQUEST_ID);
                req
            },
        ))
}

/// Serves `router` on `listener` until SIGINT or SIGTERM, then lets
/// requests in flight finish.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small answers (a chunk's acknowledgement) go out at once instead of
    // waiting for Nagle's algorithm to batch them with nothing.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Runs readiness checks with a time limit each and renders the answer:
/// 200 with `ok` lines, or 503 naming what failed (without detail, which
/// goes to the log).
pub async fn readiness<F>(checks: Vec<(&'static str, F)>) -> (axum::http::StatusCode, String)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let mut body = String::new();
    let mut ok = true;
    for (name, fut) in checks {
        let result = match tokio::time::timeout(Duration::from_secs(3), fut).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_owned()),
        };
        match result {
            Ok(()) => body.push_str(&format!("{name}: ok\n")),
            Err(e) => {
                ok = false;
                tracing::warn!(check = name, error = %e, "readiness check failed");
                body.push_str(&format!("{name}: failing\n"));
            }
        }
    }
    let status = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
