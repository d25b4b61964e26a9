//! The account flows of CRYPTO.md §1–§3, as the browser runs them.

use kiroku_crypto::b64;
use kiroku_crypto::kdf::{self, KdfParams};
use kiroku_crypto::userkey;
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

use crate::api::{self, ApiError};
use crate::i18n::T;
use crate::{dom, keystore, webcrypto};

pub const MIN_PASSWORD_CHARS: usize = 10;

/// Where a flow is, for the status line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Preparing,
    Deriving,
    Generating,
    Unlocking,
    Upgrading,
    Saving,
}

impl Step {
    pub fn text(self, t: &T) -> &'static str {
        match self {
            Step::Preparing => t.preparing,
            Step::Deriving => t.deriving,
            Step::Generating => t.generating,
            Step::Unlocking => t.unlocking,
            Step::Upgrading => t.upgrading,
            Step::Saving => t.saving,
        }
    }
}

#[derive(Debug)]
pub enum FlowError {
    Api(ApiError),
    Downgrade,
    Mismatch,
    TooShort,
    NotVerified,
    WrongCurrent,
    Browser(String),
}

impl From<ApiError> for FlowError {
    fn from(e: ApiError) -> Self {
        FlowError::Api(e)
    }
}

impl From<JsValue> for FlowError {
    fn from(e: JsValue) -> Self {
        FlowError::Browser(e.as_string().unwrap_or_else(|| format!("{e:?}")))
    }
}

impl FlowError {
    pub fn message(&self, t: &T) -> String {
        match self {
            FlowError::Api(e) if e.status == 0 => t.network.into(),
            FlowError::Api(e) if e.status == 401 => t.wrong_login.into(),
            FlowError::Api(e) if e.status == 429 => t.too_many.into(),
            FlowError::Api(e) => e.message.clone(),
            FlowError::Downgrade => t.downgrade.into(),
            FlowError::Mismatch => t.mismatch.into(),
            FlowError::TooShort => t.too_short.into(),
            FlowError::NotVerified => t.not_verified.into(),
            FlowError::WrongCurrent => t.wrong_current.into(),
            FlowError::Browser(m) => m.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Prelogin {
    salt: String,
    m_kib: u32,
    t: u32,
    p: u32,
}

impl Prelogin {
    fn params(&self) -> KdfParams {
        KdfParams {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
        }
    }
}

/// Derives with parameters the server offered, refusing a downgrade.
async fn derive_offered(
    password: &str,
    salt_b64: &str,
    params: KdfParams,
) -> Result<kdf::Derived, FlowError> {
    params.check().map_err(|_| FlowError::Downgrade)?;
    let salt = b64::decode(salt_b64).map_err(|_| FlowError::NotVerified)?;
    dom::next_frame().await;
    kdf::derive(password, &salt, params).map_err(|_| FlowError::Downgrade)
}

#[derive(Serialize)]
struct NewKeys {
    auth: String,
    salt: String,
    m_kib: u32,
    t: u32,
    p: u32,
    private_key_enc: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_auth: Option<String>,
}

/// Fresh salt, derivation and re-wrap of `pkcs8` for `password`.
async fn new_keys(
    user_id: &str,
    password: &str,
    params: KdfParams,
    pkcs8: &[u8],
) -> Result<NewKeys, FlowError> {
    let salt =
        kiroku_crypto::random_array::<16>().map_err(|e| FlowError::Browser(e.to_string()))?;
    dom::next_frame().await;
    let d = kdf::derive(password, &salt, params).map_err(|_| FlowError::Downgrade)?;
    let wrapped =
        userkey::wrap(&d.kek, user_id, pkcs8).map_err(|e| FlowError::Browser(e.to_string()))?;
    Ok(NewKeys {
        auth: b64::encode(d.auth.as_bytes()),
        salt: b64::encode(salt),
        m_kib: params.m_kib,
        t: params.t,
        p: params.p,
        private_key_enc: b64::encode(wrapped),
        public_key: None,
        old_auth: None,
    })
}

#[derive(Deserialize)]
struct LoginAnswer {
    state: String,
    user_id: String,
    csrf: String,
    private_key_enc: Option<String>,
    upgrade: Option<KdfParams>,
}

/// Signs in; returns where to go next.
pub async fn login(
    username: &str,
    password: &str,
    progress: impl Fn(Step),
) -> Result<&'static str, FlowError> {
    progress(Step::Preparing);
    let pre: Prelogin = api::post(
        "/api/auth/prelogin",
        &serde_json::json!({ "username": username }),
    )
    .await?;
    progress(Step::Deriving);
    let derived = derive_offered(password, &pre.salt, pre.params()).await?;
    let answer: LoginAnswer = api::post(
        "/api/auth/login",
        &serde_json::json!({ "username": username, "auth": b64::encode(derived.auth.as_bytes()) }),
    )
    .await?;
    dom::set_csrf_token(&answer.csrf);
    if answer.state == "setup" {
        return Ok("/setup");
    }
    progress(Step::Unlocking);
    let wrapped = answer
        .private_key_enc
        .as_deref()
        .and_then(|w| b64::decode(w).ok())
        .ok_or(FlowError::NotVerified)?;
    let pkcs8 = userkey::unwrap(&derived.kek, &answer.user_id, &wrapped)
        .map_err(|_| FlowError::NotVerified)?;
    let key = webcrypto::import_private(&pkcs8).await?;
    keystore::put(&key).await?;
    if let Some(params) = answer.upgrade {
        // The operator raised the default: re-protect the same key now.
        progress(Step::Upgrading);
        let mut keys = new_keys(&answer.user_id, password, params, &pkcs8).await?;
        keys.old_auth = Some(b64::encode(derived.auth.as_bytes()));
        let _: serde_json::Value = api::post("/api/auth/password", &keys).await?;
    }
    Ok("/projects")
}

#[derive(Deserialize)]
struct SetupAnswer {
    csrf: String,
}

fn check_new_password(password: &str, repeat: &str) -> Result<(), FlowError> {
    if password != repeat {
        return Err(FlowError::Mismatch);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(FlowError::TooShort);
    }
    Ok(())
}

/// Key setup after a temporary-password login.
pub async fn setup(
    user_id: &str,
    params: KdfParams,
    password: &str,
    repeat: &str,
    progress: impl Fn(Step),
) -> Result<&'static str, FlowError> {
    check_new_password(password, repeat)?;
    params.check().map_err(|_| FlowError::Downgrade)?;
    progress(Step::Generating);
    let (spki, pkcs8) = webcrypto::generate_rsa().await?;
    progress(Step::Deriving);
    let mut keys = new_keys(user_id, password, params, &pkcs8).await?;
    keys.public_key = Some(b64::encode(&spki));
    progress(Step::Saving);
    let answer: SetupAnswer = api::post("/api/auth/setup", &keys).await?;
    dom::set_csrf_token(&answer.csrf);
    let key = webcrypto::import_private(&pkcs8).await?;
    keystore::put(&key).await?;
    Ok("/projects")
}

#[derive(Deserialize)]
struct AccountKeys {
    user_id: String,
    salt: String,
    m_kib: u32,
    t: u32,
    p: u32,
    private_key_enc: String,
    default: KdfParams,
}

/// Password change: proves the current password locally (the wrapped key
/// must open) and to the server, then re-wraps the same key.
pub async fn change_password(
    current: &str,
    password: &str,
    repeat: &str,
    progress: impl Fn(Step),
) -> Result<(), FlowError> {
    check_new_password(password, repeat)?;
    progress(Step::Preparing);
    let keys: AccountKeys = api::get("/api/account/keys").await?;
    let stored = KdfParams {
        m_kib: keys.m_kib,
        t: keys.t,
        p: keys.p,
    };
    progress(Step::Deriving);
    let old = derive_offered(current, &keys.salt, stored).await?;
    let wrapped = b64::decode(&keys.private_key_enc).map_err(|_| FlowError::NotVerified)?;
    let pkcs8 =
        userkey::unwrap(&old.kek, &keys.user_id, &wrapped).map_err(|_| FlowError::WrongCurrent)?;
    let params = KdfParams {
        m_kib: stored.m_kib.max(keys.default.m_kib),
        t: stored.t.max(keys.default.t),
        p: stored.p.max(keys.default.p),
    };
    let mut new = new_keys(&keys.user_id, password, params, &pkcs8).await?;
    new.old_auth = Some(b64::encode(old.auth.as_bytes()));
    progress(Step::Saving);
    let _: serde_json::Value = api::post("/api/auth/password", &new).await?;
    Ok(())
}
