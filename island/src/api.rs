//! JSON calls to the app, with the session's CSRF token.

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestCredentials, RequestInit, Response};

enum Body<'a> {
    Json(String),
    Bytes(&'a [u8]),
}

/// A failed call: the HTTP status (0 for a network failure) and the
/// server's message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Chunk numbers the server reports missing (at stop).
    pub missing: Option<Vec<u32>>,
}

fn network(e: JsValue) -> ApiError {
    ApiError {
        status: 0,
        message: e.as_string().unwrap_or_else(|| "network error".into()),
        missing: None,
    }
}

async fn send(method: &str, path: &str, body: Option<Body<'_>>) -> Result<Response, ApiError> {
    let init = RequestInit::new();
    init.set_method(method);
    init.set_credentials(RequestCredentials::SameOrigin);
    let content_type = match &body {
        Some(Body::Json(b)) => {
            init.set_body(&JsValue::from_str(b));
            Some("application/json")
        }
        Some(Body::Bytes(b)) => {
            init.set_body(&js_sys::Uint8Array::from(*b));
            Some("application/octet-stream")
        }
        None => None,
    };
    let req = Request::new_with_str_and_init(path, &init).map_err(network)?;
    let h = req.headers();
    h.set("accept", "application/json").map_err(network)?;
    if let Some(ct) = content_type {
        h.set("content-type", ct).map_err(network)?;
    }
    h.set("x-csrf-token", &crate::dom::csrf_token())
        .map_err(network)?;
    let window = web_sys::window().ok_or_else(|| network(JsValue::NULL))?;
    let resp = JsFuture::from(window.fetch_with_request(&req))
        .await
        .map_err(network)?;
    Ok(resp.unchecked_into())
}

async fn json_of<T: DeserializeOwned>(resp: Response) -> Result<T, ApiError> {
    let status = resp.status();
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p)
            .await
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    if !(200..300).contains(&status) {
        let v = serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default();
        let message = v["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let missing = v["missing"].as_array().map(|a| {
            a.iter()
                .filter_map(|n| n.as_u64().map(|n| n as u32))
                .collect()
        });
        return Err(ApiError {
            status,
            message,
            missing,
        });
    }
    serde_json::from_str(&text).map_err(|e| ApiError {
        status,
        message: e.to_string(),
        missing: None,
    })
}

pub async fn post<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiError> {
    let body = serde_json::to_string(body).map_err(|e| ApiError {
        status: 0,
        message: e.to_string(),
        missing: None,
    })?;
    json_of(send("POST", path, Some(Body::Json(body))).await?).await
}

/// POSTs raw bytes; only the status matters.
pub async fn post_bytes(path: &str, bytes: &[u8]) -> Result<(), ApiError> {
    json_of::<serde_json::Value>(send("POST", path, Some(Body::Bytes(bytes))).await?)
        .await
        .map(drop)
}

pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    json_of(send("GET", path, None).await?).await
}
