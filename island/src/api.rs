//! JSON calls to the app, with the session's CSRF token.

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestCredentials, RequestInit, Response};

/// A failed call: the HTTP status (0 for a network failure) and the
/// server's message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

fn network(e: JsValue) -> ApiError {
    ApiError {
        status: 0,
        message: e.as_string().unwrap_or_else(|| "network error".into()),
    }
}

async fn send(method: &str, path: &str, body: Option<String>) -> Result<Response, ApiError> {
    let init = RequestInit::new();
    init.set_method(method);
    init.set_credentials(RequestCredentials::SameOrigin);
    if let Some(b) = &body {
        init.set_body(&JsValue::from_str(b));
    }
    let req = Request::new_with_str_and_init(path, &init).map_err(network)?;
    let h = req.headers();
    h.set("accept", "application/json").map_err(network)?;
    if body.is_some() {
        h.set("content-type", "application/json").map_err(network)?;
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
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(ApiError { status, message });
    }
    serde_json::from_str(&text).map_err(|e| ApiError {
        status,
        message: e.to_string(),
    })
}

pub async fn post<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiError> {
    let body = serde_json::to_string(body).map_err(|e| ApiError {
        status: 0,
        message: e.to_string(),
    })?;
    json_of(send("POST", path, Some(body)).await?).await
}

pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiError> {
    json_of(send("GET", path, None).await?).await
}
