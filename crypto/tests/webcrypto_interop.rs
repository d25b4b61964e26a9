//! Interoperability with an implementation nobody here wrote: the
//! browser's WebCrypto, in headless Chromium (wasm32 only).
#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Object, Reflect, Uint8Array};
use kiroku_crypto::kdf::Key32;
use kiroku_crypto::{b64, envelope, userkey};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test as test;
use web_sys::{CryptoKey, CryptoKeyPair, SubtleCrypto};

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const VECTORS: &str = include_str!("data/crypto-vectors.json");

fn vector(path: &[&str]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let mut cur = &v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*p],
        };
    }
    b64::decode(cur.as_str().unwrap()).unwrap()
}

fn subtle() -> SubtleCrypto {
    web_sys::window().unwrap().crypto().unwrap().subtle()
}

fn obj(pairs: &[(&str, JsValue)]) -> Object {
    let o = Object::new();
    for (k, v) in pairs {
        Reflect::set(&o, &JsValue::from_str(k), v).unwrap();
    }
    o
}

fn usages(list: &[&str]) -> JsValue {
    list.iter()
        .map(|u| JsValue::from_str(u))
        .collect::<Array>()
        .into()
}

async fn done(p: js_sys::Promise) -> JsValue {
    JsFuture::from(p).await.expect("WebCrypto call failed")
}

async fn aes_key(raw: &[u8]) -> CryptoKey {
    let algo = obj(&[("name", "AES-GCM".into())]);
    let data = Uint8Array::from(raw);
    done(
        subtle()
            .import_key_with_object("raw", &data, &algo, false, &usages(&["encrypt", "decrypt"]))
            .unwrap(),
    )
    .await
    .unchecked_into()
}

fn gcm(iv: &[u8], aad: &[u8]) -> Object {
    obj(&[
        ("name", "AES-GCM".into()),
        ("iv", Uint8Array::from(iv).into()),
        ("additionalData", Uint8Array::from(aad).into()),
    ])
}

fn oaep() -> Object {
    obj(&[("name", "RSA-OAEP".into()), ("hash", "SHA-256".into())])
}

async fn bytes(p: js_sys::Promise) -> Vec<u8> {
    Uint8Array::new(&done(p).await).to_vec()
}

#[test]
async fn our_wrapped_user_key_opens_with_webcrypto() {
    let kek = vector(&["kdf", "0", "kek"]);
    let pkcs8 = vector(&["user_key", "private_key_pkcs8"]);
    let user_id = "0b6f3c1e-2d4a-4f7b-9c8e-5a1d2e3f4a5b";
    let wrapped = userkey::wrap(&Key32(kek.clone().try_into().unwrap()), user_id, &pkcs8).unwrap();
    let key = aes_key(&kek).await;
    let mut ct = wrapped[12..].to_vec();
    let opened = bytes(
        subtle()
            .decrypt_with_object_and_u8_array(
                &gcm(&wrapped[..12], &userkey::wrap_aad(user_id)),
                &key,
                &mut ct,
            )
            .unwrap(),
    )
    .await;
    assert_eq!(opened, pkcs8);
}

#[test]
async fn a_user_key_wrapped_by_webcrypto_opens_with_ours() {
    let kek = vector(&["kdf", "0", "kek"]);
    let pkcs8 = vector(&["user_key", "private_key_pkcs8"]);
    let user_id = "0b6f3c1e-2d4a-4f7b-9c8e-5a1d2e3f4a5b";
    let iv = [5u8; 12];
    let key = aes_key(&kek).await;
    let mut data = pkcs8.clone();
    let ct = bytes(
        subtle()
            .encrypt_with_object_and_u8_array(
                &gcm(&iv, &userkey::wrap_aad(user_id)),
                &key,
                &mut data,
            )
            .unwrap(),
    )
    .await;
    let mut wrapped = iv.to_vec();
    wrapped.extend_from_slice(&ct);
    let kek = Key32(kek.try_into().unwrap());
    assert_eq!(
        userkey::unwrap(&kek, user_id, &wrapped).unwrap().as_slice(),
        pkcs8.as_slice()
    );
}

async fn webcrypto_pair() -> (CryptoKeyPair, Vec<u8>, Vec<u8>) {
    let algo = obj(&[
        ("name", "RSA-OAEP".into()),
        ("hash", "SHA-256".into()),
        ("modulusLength", JsValue::from(2048)),
        ("publicExponent", Uint8Array::from(&[1u8, 0, 1][..]).into()),
    ]);
    let pair: CryptoKeyPair = done(
        subtle()
            .generate_key_with_object(&algo, true, &usages(&["encrypt", "decrypt"]))
            .unwrap(),
    )
    .await
    .unchecked_into();
    let spki = bytes(subtle().export_key("spki", &pair.get_public_key()).unwrap()).await;
    let pkcs8 = bytes(
        subtle()
            .export_key("pkcs8", &pair.get_private_key())
            .unwrap(),
    )
    .await;
    (pair, spki, pkcs8)
}

#[test]
async fn an_artifact_we_seal_opens_with_webcrypto_alone() {
    let (pair, spki, _) = webcrypto_pair().await;
    let public = userkey::parse_public_key(&spki).unwrap();
    let plaintext = "# Guion\n\nVida interna: la carta está marcada.\n".as_bytes();
    let sealed = envelope::seal(&public, "a-1", "md", plaintext).unwrap();
    let mut dek_enc = sealed.dek_enc.clone();
    let dek = bytes(
        subtle()
            .decrypt_with_object_and_u8_array(&oaep(), &pair.get_private_key(), &mut dek_enc)
            .unwrap(),
    )
    .await;
    let key = aes_key(&dek).await;
    let mut body = sealed.object[16..].to_vec();
    let opened = bytes(
        subtle()
            .decrypt_with_object_and_u8_array(
                &gcm(&sealed.object[4..16], &envelope::aad("a-1", "md")),
                &key,
                &mut body,
            )
            .unwrap(),
    )
    .await;
    assert_eq!(opened, plaintext);
}

#[test]
async fn a_data_key_webcrypto_wraps_opens_with_ours() {
    let (pair, _, pkcs8) = webcrypto_pair().await;
    let private = userkey::parse_private_key(&pkcs8).unwrap();
    let dek = [42u8; 32];
    let mut data = dek.to_vec();
    let dek_enc = bytes(
        subtle()
            .encrypt_with_object_and_u8_array(&oaep(), &pair.get_public_key(), &mut data)
            .unwrap(),
    )
    .await;
    assert_eq!(
        envelope::unwrap_dek(&private, &dek_enc).unwrap().as_bytes(),
        &dek
    );
}
