//! Zero-knowledge accounts (CRYPTO.md §1–§3), server side.
//!
//! The browser derives `auth` from the password and sends only that; the
//! server keeps an Argon2id hash of it. A temporary password is put through
//! the same derivation when the operator creates the user, so even it never
//! crosses the network, and every prelogin answer has the same shape.

use argon2::{Argon2, PasswordVerifier};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use fred::interfaces::KeysInterface;
use hmac::{Hmac, KeyInit, Mac};
use kiroku_crypto::b64;
use kiroku_crypto::kdf::{self, KdfParams};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;
use tower_sessions::Session;
use uuid::Uuid;

use crate::error::AppError;
use crate::session::{self, ApiJson, ClientIp, SessionUser};
use crate::users;
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/auth/prelogin", post(prelogin))
        .route("/api/auth/login", post(login))
        .route("/api/auth/setup", post(setup))
        .route("/api/auth/password", post(change_password))
        .route("/api/account/keys", get(account_keys))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Prelogin {
    pub salt: String,
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Prelogin {
    fn new(salt: &[u8], params: KdfParams) -> Prelogin {
        Prelogin {
            salt: b64::encode(salt),
            m_kib: params.m_kib,
            t: params.t,
            p: params.p,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloginRequest {
    username: String,
}

/// A stable salt for a username that has no account, so the answer does
/// not reveal whether it exists.
pub fn invented_salt(secret: &[u8], username: &str) -> [u8; 16] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(b"kiroku/v1/prelogin|");
    mac.update(username.as_bytes());
    let out = mac.finalize().into_bytes();
    out[..16].try_into().expect("32 ≥ 16")
}

/// The salt and parameters stored for `username`, or invented ones.
pub async fn prelogin_for(
    db: &PgPool,
    secret: &[u8],
    default: KdfParams,
    username: &str,
) -> Result<Prelogin, AppError> {
    let row: Option<(Vec<u8>, i32, i32, i32)> = sqlx::query_as(
        "SELECT kdf_salt, kdf_m_kib, kdf_t, kdf_p FROM users
          WHERE username = $1 AND kdf_salt IS NOT NULL",
    )
    .bind(username)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some((salt, m, t, p)) => Prelogin::new(
            &salt,
            KdfParams {
                m_kib: m as u32,
                t: t as u32,
                p: p as u32,
            },
        ),
        None => Prelogin::new(&invented_salt(secret, username), default),
    })
}

fn check_username_shape(username: &str) -> Result<(), AppError> {
    if username.is_empty() || username.len() > 63 {
        return Err(AppError::BadRequest(
            "username must be 1–63 characters".into(),
        ));
    }
    Ok(())
}

async fn prelogin(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<PreloginRequest>,
) -> Result<Json<Prelogin>, AppError> {
    check_username_shape(&req.username)?;
    let cfg = &s.config;
    Ok(Json(
        prelogin_for(&s.db, &cfg.prelogin_secret, cfg.kdf_default, &req.username).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    auth: String,
}

#[derive(Serialize)]
pub struct LoginResponse {
    /// `setup` (temporary password: only key setup is allowed) or `ready`.
    state: &'static str,
    user_id: Uuid,
    csrf: String,
    /// The wrapped private key, for the browser to open with `kek`.
    private_key_enc: Option<String>,
    /// The operator's current KDF default, when the stored one is weaker.
    upgrade: Option<KdfParams>,
}

fn decode_auth(text: &str) -> Result<[u8; 32], AppError> {
    b64::decode_array::<32>(text).map_err(|_| AppError::BadRequest("auth must be 32 bytes".into()))
}

/// Counts an event in Redis for the window; returns the new count.
async fn bump(s: &AppState, key: &str) -> Result<u32, AppError> {
    let n: i64 = s
        .sessions
        .incr(key)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    if n == 1 {
        let _: () = s
            .sessions
            .expire(key, s.config.login_window_secs.max(1), None)
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
    }
    Ok(n.max(0) as u32)
}

async fn count(s: &AppState, key: &str) -> Result<u32, AppError> {
    let n: Option<i64> = s
        .sessions
        .get(key)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(n.unwrap_or(0).max(0) as u32)
}

fn account_key(s: &AppState, username: &str) -> String {
    format!("{}:ratelimit:account:{username}", s.config.redis_prefix)
}

/// Verifies `auth` against a PHC string; runs a dummy verification when
/// there is none, so unknown users take as long as known ones.
fn verify(auth: &[u8], phc: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| users::slow_hash(b"kiroku-dummy").expect("hashing works"));
    let target = phc.unwrap_or(dummy);
    let ok = Argon2::default().verify_password(auth, target).is_ok();
    ok && phc.is_some()
}

#[derive(sqlx::FromRow)]
struct LoginRow {
    id: Uuid,
    temp_password_hash: Option<String>,
    auth_hash: Option<String>,
    private_key_enc: Option<Vec<u8>>,
    kdf_m_kib: Option<i32>,
    kdf_t: Option<i32>,
    kdf_p: Option<i32>,
    disabled: bool,
}

async fn login(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    session: Session,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, AppError> {
    check_username_shape(&req.username)?;
    let auth = decode_auth(&req.auth)?;
    let cfg = &s.config;

    // Per address: every attempt counts. Per account: failures count.
    if bump(&s, &format!("{}:ratelimit:ip:{ip}", cfg.redis_prefix)).await?
        > cfg.login_limit_per_address
        || count(&s, &account_key(&s, &req.username)).await? >= cfg.login_limit_per_account
    {
        tracing::warn!(client = %ip, "login rate limit reached");
        return Err(AppError::TooManyRequests);
    }

    let row: Option<LoginRow> = sqlx::query_as(
        "SELECT id, temp_password_hash, auth_hash, private_key_enc, kdf_m_kib, kdf_t, kdf_p, disabled
           FROM users WHERE username = $1",
    )
    .bind(&req.username)
    .fetch_optional(&s.db)
    .await?;

    let (hash, setup_only) = match &row {
        Some(r) if r.auth_hash.is_some() => (r.auth_hash.as_deref(), false),
        Some(r) => (r.temp_password_hash.as_deref(), true),
        None => (None, false),
    };
    let hash = hash.map(str::to_owned);
    let verified = tokio::task::spawn_blocking(move || verify(&auth, hash.as_deref()))
        .await
        .map_err(|_| AppError::internal("verify task"))?;
    let row = match row {
        Some(r) if verified && !r.disabled => r,
        _ => {
            bump(&s, &account_key(&s, &req.username)).await?;
            tracing::info!(client = %ip, "login refused");
            return Err(AppError::Unauthorized);
        }
    };
    let _: i64 = s
        .sessions
        .del(account_key(&s, &req.username))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;

    let csrf = session::sign_in(
        &session,
        SessionUser {
            id: row.id,
            username: req.username.clone(),
            setup_only,
        },
    )
    .await?;
    let stored = match (row.kdf_m_kib, row.kdf_t, row.kdf_p) {
        (Some(m), Some(t), Some(p)) => Some(KdfParams {
            m_kib: m as u32,
            t: t as u32,
            p: p as u32,
        }),
        _ => None,
    };
    let upgrade = match stored {
        Some(p) if !setup_only && !p.at_least(&cfg.kdf_default) => Some(cfg.kdf_default),
        _ => None,
    };
    tracing::info!(user_id = %row.id, setup_only, "signed in");
    Ok(Json(LoginResponse {
        state: if setup_only { "setup" } else { "ready" },
        user_id: row.id,
        csrf,
        private_key_enc: if setup_only {
            None
        } else {
            row.private_key_enc.map(b64::encode)
        },
        upgrade,
    }))
}

/// New key material from the browser: at key setup and password change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMaterial {
    auth: String,
    salt: String,
    m_kib: u32,
    t: u32,
    p: u32,
    private_key_enc: String,
}

struct CheckedKeys {
    auth_hash: String,
    salt: Vec<u8>,
    params: KdfParams,
    private_key_enc: Vec<u8>,
}

impl KeyMaterial {
    async fn check(self) -> Result<CheckedKeys, AppError> {
        let auth = decode_auth(&self.auth)?;
        let salt = b64::decode_array::<16>(&self.salt)
            .map_err(|_| AppError::BadRequest("salt must be 16 bytes".into()))?;
        let params = KdfParams {
            m_kib: self.m_kib,
            t: self.t,
            p: self.p,
        };
        params
            .check()
            .map_err(|e| AppError::BadRequest(format!("KDF parameters refused: {e}")))?;
        let private_key_enc = b64::decode(&self.private_key_enc)
            .map_err(|_| AppError::BadRequest("private_key_enc must be base64url".into()))?;
        // nonce(12) + PKCS#8 of RSA-2048 (about 1.2 KB) + tag(16)
        if !(600..=4096).contains(&private_key_enc.len()) {
            return Err(AppError::BadRequest(
                "private_key_enc has an impossible length".into(),
            ));
        }
        let auth_hash = tokio::task::spawn_blocking(move || users::slow_hash(&auth))
            .await
            .map_err(|_| AppError::internal("hash task"))??;
        Ok(CheckedKeys {
            auth_hash,
            salt: salt.to_vec(),
            params,
            private_key_enc,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    public_key: String,
    #[serde(flatten)]
    keys: KeyMaterial,
}

#[derive(Serialize)]
pub struct SetupResponse {
    state: &'static str,
    csrf: String,
}

async fn setup(
    State(s): State<AppState>,
    session: Session,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<Json<SetupResponse>, AppError> {
    let user = session::user(&session)
        .await?
        .ok_or(AppError::Unauthorized)?;
    if !user.setup_only {
        return Err(AppError::Conflict(
            "this account's keys are already set up".into(),
        ));
    }
    let public_key = b64::decode(&req.public_key)
        .map_err(|_| AppError::BadRequest("public_key must be base64url".into()))?;
    kiroku_crypto::userkey::parse_public_key(&public_key)
        .map_err(|e| AppError::BadRequest(format!("public key refused: {e}")))?;
    let keys = req.keys.check().await?;

    let mut tx = s.db.begin().await?;
    let updated = sqlx::query(
        "UPDATE users SET auth_hash = $2, kdf_salt = $3, kdf_m_kib = $4, kdf_t = $5, kdf_p = $6,
                private_key_enc = $7, temp_password_hash = NULL, updated_at = now()
          WHERE id = $1 AND auth_hash IS NULL AND temp_password_hash IS NOT NULL AND NOT disabled",
    )
    .bind(user.id)
    .bind(&keys.auth_hash)
    .bind(&keys.salt)
    .bind(keys.params.m_kib as i32)
    .bind(keys.params.t as i32)
    .bind(keys.params.p as i32)
    .bind(&keys.private_key_enc)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(AppError::Conflict(
            "this account's keys are already set up".into(),
        ));
    }
    sqlx::query("INSERT INTO user_public_keys (user_id, public_key) VALUES ($1, $2)")
        .bind(user.id)
        .bind(&public_key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let csrf = session::sign_in(
        &session,
        SessionUser {
            setup_only: false,
            ..user.clone()
        },
    )
    .await?;
    tracing::info!(user_id = %user.id, "key setup complete");
    Ok(Json(SetupResponse {
        state: "ready",
        csrf,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    old_auth: String,
    #[serde(flatten)]
    keys: KeyMaterial,
}

/// Password change and KDF upgrade: prove the current `auth`, then swap
/// salt, parameters, auth hash and wrapped key together.
async fn change_password(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    session: Session,
    ApiJson(req): ApiJson<PasswordRequest>,
) -> Result<Json<serde_json::Value>, AppError> {
    let user = session::user(&session)
        .await?
        .ok_or(AppError::Unauthorized)?;
    if user.setup_only {
        return Err(AppError::Forbidden);
    }
    if count(&s, &account_key(&s, &user.username)).await? >= s.config.login_limit_per_account {
        return Err(AppError::TooManyRequests);
    }
    let old_auth = decode_auth(&req.old_auth)?;
    let keys = req.keys.check().await?;

    let mut tx = s.db.begin().await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT auth_hash FROM users WHERE id = $1 AND NOT disabled FOR UPDATE")
            .bind(user.id)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    let verified = tokio::task::spawn_blocking(move || verify(&old_auth, current.as_deref()))
        .await
        .map_err(|_| AppError::internal("verify task"))?;
    if !verified {
        bump(&s, &account_key(&s, &user.username)).await?;
        tracing::info!(user_id = %user.id, client = %ip, "password change refused");
        return Err(AppError::BadRequest(
            "the current password is not correct".into(),
        ));
    }
    sqlx::query(
        "UPDATE users SET auth_hash = $2, kdf_salt = $3, kdf_m_kib = $4, kdf_t = $5, kdf_p = $6,
                private_key_enc = $7, updated_at = now()
          WHERE id = $1",
    )
    .bind(user.id)
    .bind(&keys.auth_hash)
    .bind(&keys.salt)
    .bind(keys.params.m_kib as i32)
    .bind(keys.params.t as i32)
    .bind(keys.params.p as i32)
    .bind(&keys.private_key_enc)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, "password or KDF parameters changed");
    Ok(Json(serde_json::json!({ "state": "ready" })))
}

#[derive(Serialize)]
pub struct AccountKeys {
    user_id: Uuid,
    username: String,
    #[serde(flatten)]
    kdf: Prelogin,
    private_key_enc: String,
    default: KdfParams,
}

/// What the password-change page needs to re-wrap the key.
async fn account_keys(
    State(s): State<AppState>,
    session: Session,
) -> Result<Json<AccountKeys>, AppError> {
    let user = session::user(&session)
        .await?
        .ok_or(AppError::Unauthorized)?;
    if user.setup_only {
        return Err(AppError::Forbidden);
    }
    let row: (Vec<u8>, i32, i32, i32, Vec<u8>) = sqlx::query_as(
        "SELECT kdf_salt, kdf_m_kib, kdf_t, kdf_p, private_key_enc FROM users WHERE id = $1",
    )
    .bind(user.id)
    .fetch_one(&s.db)
    .await?;
    let params = KdfParams {
        m_kib: row.1 as u32,
        t: row.2 as u32,
        p: row.3 as u32,
    };
    Ok(Json(AccountKeys {
        user_id: user.id,
        username: user.username,
        kdf: Prelogin::new(&row.0, params),
        private_key_enc: b64::encode(row.4),
        default: s.config.kdf_default,
    }))
}

/// What `user add` stores for a temporary password: its salt, the KDF
/// parameters, and the slow hash of the `auth` the browser will derive.
pub fn temporary_credentials(
    password: &str,
    params: KdfParams,
) -> Result<([u8; 16], String), AppError> {
    let salt = kiroku_crypto::random_array::<16>().map_err(|_| AppError::internal("rng"))?;
    let derived =
        kdf::derive(password, &salt, params).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok((salt, users::slow_hash(derived.auth.as_bytes())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_salts_are_stable_and_per_user() {
        let a = invented_salt(b"secret-secret-secret-secret-1234", "ana");
        assert_eq!(a, invented_salt(b"secret-secret-secret-secret-1234", "ana"));
        assert_ne!(a, invented_salt(b"secret-secret-secret-secret-1234", "bob"));
        assert_ne!(a, invented_salt(b"another-secret-another-secret-12", "ana"));
    }

    #[test]
    fn verify_refuses_without_a_hash_and_with_a_wrong_secret() {
        let h = users::slow_hash(b"right").unwrap();
        assert!(verify(b"right", Some(&h)));
        assert!(!verify(b"wrong", Some(&h)));
        assert!(!verify(b"kiroku-dummy", None));
    }
}
