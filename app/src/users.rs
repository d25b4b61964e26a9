//! Accounts as the operator manages them: create, list, disable.

use argon2::{Argon2, PasswordHasher};
use kiroku_crypto::kdf::KdfParams;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::AppError;

/// Usernames are lowercase, short and plain, so they are safe in logs,
/// URLs and the prelogin salt derivation.
pub fn valid_username(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// A temporary password: 20 characters from an alphabet without look-alikes
/// (about 100 bits).
pub fn temporary_password() -> Result<String, AppError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY346789";
    let mut out = String::with_capacity(24);
    let mut buf = [0u8; 64];
    kiroku_crypto::random_bytes(&mut buf).map_err(|_| AppError::internal("rng"))?;
    for b in buf {
        // Rejection sampling keeps the distribution uniform.
        if (b as usize) < 256 - 256 % ALPHABET.len() {
            out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            if out.len() == 20 {
                return Ok(out);
            }
        }
    }
    Err(AppError::internal("rng"))
}

/// Argon2id (library defaults) PHC string for server-side secrets.
pub fn slow_hash(secret: &[u8]) -> Result<String, AppError> {
    Argon2::default()
        .hash_password(secret)
        .map(|h| h.to_string())
        .map_err(|_| AppError::internal("hashing"))
}

pub struct NewUser {
    pub id: Uuid,
    pub username: String,
    pub temporary_password: String,
}

/// Creates `username` with a fresh temporary password, stored the way the
/// browser will prove it: Argon2id/HKDF `auth` under `params`, hashed again.
pub async fn add(db: &PgPool, username: &str, params: KdfParams) -> Result<NewUser, AppError> {
    if !valid_username(username) {
        return Err(AppError::BadRequest(
            "usernames are 1–63 characters: a-z, 0-9, '.', '_', '-', starting with a letter or digit"
                .into(),
        ));
    }
    let password = temporary_password()?;
    let pw = password.clone();
    let (salt, hash) =
        tokio::task::spawn_blocking(move || crate::auth::temporary_credentials(&pw, params))
            .await
            .map_err(|_| AppError::internal("derive task"))??;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, temp_password_hash, kdf_salt, kdf_m_kib, kdf_t, kdf_p)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(id)
    .bind(username)
    .bind(hash)
    .bind(salt.to_vec())
    .bind(params.m_kib as i32)
    .bind(params.t as i32)
    .bind(params.p as i32)
    .execute(db)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AppError::Conflict(format!(
            "user {username} already exists"
        )));
    }
    tracing::info!(user_id = %id, "user created");
    Ok(NewUser {
        id,
        username: username.to_owned(),
        temporary_password: password,
    })
}

#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub disabled: bool,
    pub key_set_up: bool,
    pub created_at: time::OffsetDateTime,
}

pub async fn list(db: &PgPool) -> Result<Vec<UserRow>, AppError> {
    Ok(sqlx::query_as(
        "SELECT u.id, u.username, u.disabled, (k.user_id IS NOT NULL) AS key_set_up, u.created_at
           FROM users u LEFT JOIN user_public_keys k ON k.user_id = u.id
          ORDER BY u.username",
    )
    .fetch_all(db)
    .await?)
}

pub async fn disable(db: &PgPool, username: &str) -> Result<(), AppError> {
    let done =
        sqlx::query("UPDATE users SET disabled = true, updated_at = now() WHERE username = $1")
            .bind(username)
            .execute(db)
            .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::NotFound);
    }
    tracing::info!(username, "user disabled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_plain() {
        assert!(valid_username("ana.maria-2"));
        for bad in [
            "",
            "Ana",
            "-ana",
            "ana maria",
            "ana/..",
            &"a".repeat(64),
            "añа",
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn temporary_passwords_are_long_and_distinct() {
        let a = temporary_password().unwrap();
        let b = temporary_password().unwrap();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
