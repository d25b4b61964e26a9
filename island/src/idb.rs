//! Minimal promise-style IndexedDB access: one object store per database.

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

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

/// A database holding a single object store of the same name.
#[derive(Clone, Copy)]
pub struct Store {
    pub db: &'static str,
    pub store: &'static str,
}

impl Store {
    async fn open(&self) -> Result<IdbDatabase, JsValue> {
        let req: IdbOpenDbRequest = factory()?.open_with_u32(self.db, 1)?;
        let upgrade_req = req.clone();
        let name = self.store;
        let on_upgrade = Closure::once_into_js(move || {
            if let Ok(db) = upgrade_req
                .result()
                .and_then(|r| r.dyn_into::<IdbDatabase>())
                && !db.object_store_names().contains(name)
            {
                let _ = db.create_object_store(name);
            }
        });
        req.set_onupgradeneeded(Some(on_upgrade.unchecked_ref()));
        let db = JsFuture::from(settle(&req)).await?;
        db.dyn_into()
    }

    pub async fn put(&self, key: &str, value: &JsValue) -> Result<(), JsValue> {
        let db = self.open().await?;
        let tx = db.transaction_with_str_and_mode(self.store, IdbTransactionMode::Readwrite)?;
        let req = tx
            .object_store(self.store)?
            .put_with_key(value, &JsValue::from_str(key))?;
        let result = JsFuture::from(settle(&req)).await.map(drop);
        db.close();
        result
    }

    pub async fn get(&self, key: &str) -> Result<JsValue, JsValue> {
        let db = self.open().await?;
        let tx = db.transaction_with_str(self.store)?;
        let req = tx.object_store(self.store)?.get(&JsValue::from_str(key))?;
        let value = JsFuture::from(settle(&req)).await;
        db.close();
        value
    }

    pub async fn delete(&self, key: &str) -> Result<(), JsValue> {
        let db = self.open().await?;
        let tx = db.transaction_with_str_and_mode(self.store, IdbTransactionMode::Readwrite)?;
        let req = tx
            .object_store(self.store)?
            .delete(&JsValue::from_str(key))?;
        let result = JsFuture::from(settle(&req)).await.map(drop);
        db.close();
        result
    }

    /// Every key in the store (they are all strings here).
    pub async fn keys(&self) -> Result<Vec<String>, JsValue> {
        let db = self.open().await?;
        let tx = db.transaction_with_str(self.store)?;
        let req = tx.object_store(self.store)?.get_all_keys()?;
        let all = JsFuture::from(settle(&req)).await;
        db.close();
        Ok(js_sys::Array::from(&all?)
            .iter()
            .filter_map(|k| k.as_string())
            .collect())
    }

    /// Deletes the whole database.
    pub async fn wipe(&self) -> Result<(), JsValue> {
        let req = factory()?.delete_database(self.db)?;
        JsFuture::from(settle(&req)).await.map(drop)
    }
}
