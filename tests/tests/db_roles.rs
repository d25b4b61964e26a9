//! The database roles: each can do what its binary needs and nothing that
//! would let a compromised app swap keys or touch the workers' output.

use kiroku_tests::{TestDb, env};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

fn is_denied(r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> bool {
    match r {
        Err(sqlx::Error::Database(e)) => e.code().as_deref() == Some("42501"),
        _ => false,
    }
}

#[tokio::test]
async fn app_role_cannot_change_public_keys_or_artifacts_and_worker_cannot_create_users() {
    let env = env();
    let db = TestDb::create(&env).await;
    let mut app = PgConnection::connect(&db.app_url).await.unwrap();
    let mut worker = PgConnection::connect(&db.worker_url).await.unwrap();

    // What the app must be able to do.
    let user = Uuid::new_v4();
    sqlx::query("INSERT INTO users (id, username, temp_password_hash) VALUES ($1, 'ana', 'x')")
        .bind(user)
        .execute(&mut app)
        .await
        .expect("app creates users");
    sqlx::query("INSERT INTO user_public_keys (user_id, public_key) VALUES ($1, $2)")
        .bind(user)
        .bind(vec![1u8; 294])
        .execute(&mut app)
        .await
        .expect("app stores a public key once");
    sqlx::query("UPDATE users SET auth_hash = 'y', temp_password_hash = NULL WHERE id = $1")
        .bind(user)
        .execute(&mut app)
        .await
        .expect("app completes key setup");

    // What it must not.
    let swap = sqlx::query("UPDATE user_public_keys SET public_key = $2 WHERE user_id = $1")
        .bind(user)
        .bind(vec![2u8; 294])
        .execute(&mut app)
        .await;
    assert!(is_denied(swap), "app role changed a public key");
    let second = sqlx::query("INSERT INTO user_public_keys (user_id, public_key) VALUES ($1, $2)")
        .bind(user)
        .bind(vec![2u8; 294])
        .execute(&mut app)
        .await;
    assert!(second.is_err(), "a second public key was accepted");
    let delete_key = sqlx::query("DELETE FROM user_public_keys")
        .execute(&mut app)
        .await;
    assert!(is_denied(delete_key), "app role deleted a public key");
    assert!(is_denied(
        sqlx::query("DELETE FROM artifacts").execute(&mut app).await
    ));
    let forge = sqlx::query(
        "INSERT INTO artifacts (id, project_id, kind, content_type, file_name, object_key, size,
                                sha256, dek_enc, algorithm)
         VALUES ($1, $1, 'md', 'text/markdown', 'x.md', 'final/v1/x', 1, $2, $2, 'A256GCM+RSA-OAEP-256')",
    )
    .bind(Uuid::new_v4())
    .bind(vec![0u8; 32])
    .execute(&mut app)
    .await;
    assert!(is_denied(forge), "app role wrote an artifact row");

    // The worker reads keys and projects but cannot create users or read
    // login secrets.
    let create =
        sqlx::query("INSERT INTO users (id, username, temp_password_hash) VALUES ($1, 'eve', 'x')")
            .bind(Uuid::new_v4())
            .execute(&mut worker)
            .await;
    assert!(is_denied(create), "worker role created a user");
    let secrets = sqlx::query("SELECT auth_hash FROM users")
        .execute(&mut worker)
        .await;
    assert!(is_denied(secrets), "worker role read auth hashes");
    let key: Vec<u8> =
        sqlx::query_scalar("SELECT public_key FROM user_public_keys WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut worker)
            .await
            .expect("worker reads public keys");
    assert_eq!(key, vec![1u8; 294]);
    let swap = sqlx::query("UPDATE user_public_keys SET public_key = $1")
        .bind(vec![3u8; 294])
        .execute(&mut worker)
        .await;
    assert!(is_denied(swap), "worker role changed a public key");

    app.close().await.ok();
    worker.close().await.ok();
    db.drop_db(&env).await;
}
