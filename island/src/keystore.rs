//! Keeps the session's private key in IndexedDB as a non-extractable
//! WebCrypto key (CRYPTO.md §3). Pages reach it without the password; no
//! script can export it; logout and an ended session delete it.

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CryptoKey, IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

const DB: &str = "kiroku";
const STORE: &str = "keys";
const PRIVATE: &str = "private";

/// Turns an IndexedDB request into a promise of its result.
fn settle(req: &IdbRequest) -> Promise {
    let req = req.clone();
    Promise::new(&mut |resolve, reject| {
        let r = req.clone();
        let ok = Closure::once_into_js(move || {
            let _ = resolve.call1(&JsValue::NULL, &r.result().unwrap_or(JsValue::UNDEFINED));
        });
        let fail = Closure::once_into_js(move || {
            let _ = reject.call1(
                &JsValue::NULL,
                &JsValue::from_str("IndexedDB request failed"),
            );
        });
        req.set_onsuccess(Some(ok.unchecked_ref()));
        req.set_onerror(Some(fail.unchecked_ref()));
    })
}

fn factory() -> Result<web_sys::IdbFactory, JsValue> {
    web_sys::window()
        .ok_or(JsValue::NULL)?
        .indexed_db()?
        .ok_or_else(|| JsValue::from_str("IndexedDB is not available"))
}

async fn open() -> Result<IdbDatabase, JsValue> {
    let req: IdbOpenDbRequest = factory()?.open_with_u32(DB, 1)?;
    let upgrade_req = req.clone();
    let on_upgrade = Closure::once_into_js(move || {
        if let Ok(db) = upgrade_req
            .result()
            .and_then(|r| r.dyn_into::<IdbDatabase>())
            && !db.object_store_names().contains(STORE)
        {
            let _ = db.create_object_store(STORE);
        }
    });
    req.set_onupgradeneeded(Some(on_upgrade.unchecked_ref()));
    let db = JsFuture::from(settle(&req)).await?;
    db.dyn_into()
}

/// Stores the session's private key, replacing any previous one.
pub async fn put(key: &CryptoKey) -> Result<(), JsValue> {
    let db = open().await?;
    let tx = db.transaction_with_str_and_mode(STORE, IdbTransactionMode::Readwrite)?;
    let req = tx
        .object_store(STORE)?
        .put_with_key(key, &JsValue::from_str(PRIVATE))?;
    JsFuture::from(settle(&req)).await?;
    db.close();
    Ok(())
}

/// The session's private key, if this browser holds one.
pub async fn get() -> Result<Option<CryptoKey>, JsValue> {
    let db = open().await?;
    let tx = db.transaction_with_str(STORE)?;
    let req = tx.object_store(STORE)?.get(&JsValue::from_str(PRIVATE))?;
    let value = JsFuture::from(settle(&req)).await?;
    db.close();
    Ok(value.dyn_into::<CryptoKey>().ok())
}

/// Deletes everything the island keeps.
pub async fn wipe() -> Result<(), JsValue> {
    let req = factory()?.delete_database(DB)?;
    JsFuture::from(settle(&req)).await.map(drop)
}
