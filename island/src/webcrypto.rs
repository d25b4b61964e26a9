//! The browser's WebCrypto, for what it does faster than wasm (RSA key
//! generation, RSA-OAEP, AES-GCM) and for holding keys non-extractable.

use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CryptoKey, CryptoKeyPair, SubtleCrypto};
use zeroize::Zeroizing;

fn subtle() -> Result<SubtleCrypto, JsValue> {
    let w = web_sys::window().ok_or(JsValue::NULL)?;
    Ok(w.crypto()?.subtle())
}

fn set(obj: &Object, key: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(obj, &JsValue::from_str(key), value).map(drop)
}

/// `{name: "RSA-OAEP", hash: "SHA-256"}` plus generation fields when asked.
fn rsa_oaep(generate: bool) -> Result<Object, JsValue> {
    let algo = Object::new();
    set(&algo, "name", &"RSA-OAEP".into())?;
    set(&algo, "hash", &"SHA-256".into())?;
    if generate {
        set(&algo, "modulusLength", &JsValue::from(2048))?;
        set(&algo, "publicExponent", &Uint8Array::from(&[1u8, 0, 1][..]))?;
    }
    Ok(algo)
}

fn usages(list: &[&str]) -> JsValue {
    list.iter()
        .map(|u| JsValue::from_str(u))
        .collect::<Array>()
        .into()
}

async fn bytes_of(promise: js_sys::Promise) -> Result<Vec<u8>, JsValue> {
    let buf = JsFuture::from(promise).await?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// A fresh RSA-2048 key pair: SPKI public, PKCS#8 private.
///
/// The private key is exported once so that it can be wrapped with `kek`;
/// the caller wipes the bytes as soon as they are wrapped and imported.
pub async fn generate_rsa() -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), JsValue> {
    let s = subtle()?;
    let pair = JsFuture::from(s.generate_key_with_object(
        &rsa_oaep(true)?,
        true,
        &usages(&["encrypt", "decrypt"]),
    )?)
    .await?;
    let pair: CryptoKeyPair = pair.unchecked_into();
    let spki = bytes_of(s.export_key("spki", &pair.get_public_key())?).await?;
    let pkcs8 = Zeroizing::new(bytes_of(s.export_key("pkcs8", &pair.get_private_key())?).await?);
    Ok((spki, pkcs8))
}

/// Imports a PKCS#8 private key as a non-extractable RSA-OAEP key: script
/// can use it to decrypt but never read it back.
pub async fn import_private(pkcs8: &[u8]) -> Result<CryptoKey, JsValue> {
    let s = subtle()?;
    let data = Uint8Array::from(pkcs8);
    let key = JsFuture::from(s.import_key_with_object(
        "pkcs8",
        &data,
        &rsa_oaep(false)?,
        false,
        &usages(&["decrypt"]),
    )?)
    .await?;
    Ok(key.unchecked_into())
}

/// RSA-OAEP-SHA256 decryption with a held key (an artifact's data key).
pub async fn oaep_decrypt(key: &CryptoKey, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, JsValue> {
    let s = subtle()?;
    let out = bytes_of(s.decrypt_with_object_and_u8_array(&rsa_oaep(false)?, key, data)?).await?;
    Ok(Zeroizing::new(out))
}

/// AES-256-GCM decryption (`data` is ciphertext followed by the tag, a
/// view on the JS heap). Returns the plaintext as a JS `ArrayBuffer`: large
/// files are never copied through wasm memory.
pub async fn aes_gcm_open(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    data: &Uint8Array,
) -> Result<JsValue, JsValue> {
    let s = subtle()?;
    let algo = Object::new();
    set(&algo, "name", &"AES-GCM".into())?;
    let raw = Uint8Array::from(key);
    let key: CryptoKey = JsFuture::from(s.import_key_with_object(
        "raw",
        &raw,
        &algo,
        false,
        &usages(&["decrypt"]),
    )?)
    .await?
    .unchecked_into();
    let params = Object::new();
    set(&params, "name", &"AES-GCM".into())?;
    set(&params, "iv", &Uint8Array::from(iv))?;
    set(&params, "additionalData", &Uint8Array::from(aad))?;
    JsFuture::from(s.decrypt_with_object_and_buffer_source(&params, &key, data)?).await
}
