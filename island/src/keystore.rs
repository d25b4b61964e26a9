//! Keeps the session's private key in IndexedDB as a non-extractable
//! WebCrypto key (CRYPTO.md §3). Pages reach it without the password; no
//! script can export it; logout and an ended session delete it.

use wasm_bindgen::{JsCast, JsValue};
use web_sys::CryptoKey;

use crate::idb::Store;

const KEYS: Store = Store {
    db: "kiroku",
    store: "keys",
};
const PRIVATE: &str = "private";

/// Stores the session's private key, replacing any previous one.
pub async fn put(key: &CryptoKey) -> Result<(), JsValue> {
    KEYS.put(PRIVATE, key).await
}

/// The session's private key, if this browser holds one.
pub async fn get() -> Result<Option<CryptoKey>, JsValue> {
    Ok(KEYS.get(PRIVATE).await?.dyn_into::<CryptoKey>().ok())
}

/// Deletes everything kept for the session.
pub async fn wipe() -> Result<(), JsValue> {
    KEYS.wipe().await
}
