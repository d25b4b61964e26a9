//! Small DOM helpers.

use kiroku_crypto::kdf::KdfParams;
use wasm_bindgen::JsValue;
use web_sys::{Document, Element};

pub fn document() -> Document {
    web_sys::window()
        .and_then(|w| w.document())
        .expect("a page has a document")
}

/// The CSRF token the server put in `<meta name="csrf-token">`.
pub fn csrf_token() -> String {
    document()
        .query_selector("meta[name=csrf-token]")
        .ok()
        .flatten()
        .and_then(|m| m.get_attribute("content"))
        .unwrap_or_default()
}

/// Replaces the page's CSRF token (the session gets a new one at login).
pub fn set_csrf_token(token: &str) {
    if let Ok(Some(m)) = document().query_selector("meta[name=csrf-token]") {
        let _ = m.set_attribute("content", token);
    }
}

/// `es` or `en`, from `<html lang>`.
pub fn lang() -> String {
    document()
        .document_element()
        .and_then(|e| e.get_attribute("lang"))
        .unwrap_or_else(|| "es".into())
}

pub fn go(path: &str) {
    if let Some(w) = web_sys::window() {
        let _ = w.location().assign(path);
    }
}

/// Asks the browser's own yes/no question.
pub fn confirm(question: &str) -> bool {
    web_sys::window()
        .and_then(|w| w.confirm_with_message(question).ok())
        .unwrap_or(false)
}

/// Loads the current page again.
pub fn reload() {
    if let Some(w) = web_sys::window() {
        let _ = w.location().reload();
    }
}

/// Tells tests and scripts that the island has mounted.
pub fn mark_ready() {
    if let Some(root) = document().document_element() {
        let _ = root.set_attribute("data-island-ready", "1");
    }
}

/// KDF parameters from `data-m-kib`, `data-t`, `data-p`.
pub fn params_from(el: &Element) -> Option<KdfParams> {
    let n = |a: &str| el.get_attribute(a)?.parse::<u32>().ok();
    Some(KdfParams {
        m_kib: n("data-m-kib")?,
        t: n("data-t")?,
        p: n("data-p")?,
    })
}

/// Resolves after the browser has had a chance to paint, so a status line
/// shows before a long synchronous computation (Argon2id) starts.
pub async fn next_frame() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 30);
        } else {
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Resolves after `ms` milliseconds.
pub async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
