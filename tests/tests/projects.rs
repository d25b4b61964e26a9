//! Projects and their sealed artifacts through the app: export tokens only
//! for one's own artifacts, rename, and deletion finished by a worker.

use bytes::Bytes;
use kiroku_crypto::token::{KeyRing, Policy};
use kiroku_crypto::{envelope, userkey};
use kiroku_storage::Role;
use kiroku_tests::{TestApp, env, s3_store};
use serde_json::json;
use uuid::Uuid;

/// A finished project with one sealed Markdown artifact, written as the
/// workers write them (worker database role and storage key).
async fn finished_project(
    app: &TestApp,
    user_id: &str,
    public_spki: &[u8],
) -> (Uuid, Uuid, String) {
    let user: Uuid = user_id.parse().unwrap();
    let project = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO projects (id, user_id, title, status, duration_ms) VALUES ($1, $2, 'Hecha', 'queued', 60000)",
    )
    .bind(project)
    .bind(user)
    .execute(&app.pool)
    .await
    .unwrap();
    let worker_db = sqlx::PgPool::connect(&app.db.worker_url).await.unwrap();
    sqlx::query("UPDATE projects SET status = 'ready' WHERE id = $1")
        .bind(project)
        .execute(&worker_db)
        .await
        .unwrap();
    let artifact = Uuid::new_v4();
    let public = userkey::parse_public_key(public_spki).unwrap();
    let sealed = envelope::seal(&public, &artifact.to_string(), "md", b"# Hecha\n").unwrap();
    let key = format!("final/v1/{user}/{project}/{artifact}");
    s3_store(&env(), Role::Worker)
        .put(&key, Bytes::from(sealed.object.clone()))
        .await
        .unwrap();
    let sha: Vec<u8> = <rsa::sha2::Sha256 as rsa::sha2::Digest>::digest(&sealed.object).to_vec();
    sqlx::query(
        "INSERT INTO artifacts (id, project_id, kind, content_type, file_name, object_key, size, sha256,
                                dek_enc, algorithm)
         VALUES ($1, $2, 'md', 'text/markdown', 'hecha.md', $3, $4, $5, $6, 'A256GCM+RSA-OAEP-256')",
    )
    .bind(artifact)
    .bind(project)
    .bind(&key)
    .bind(sealed.object.len() as i64)
    .bind(sha)
    .bind(&sealed.dek_enc)
    .execute(&worker_db)
    .await
    .unwrap();
    worker_db.close().await;
    (project, artifact, key)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn tokens_are_minted_only_for_ones_own_artifacts() {
    let app = TestApp::start(&[]).await;
    let (owner, owner_id, pair) = app.ready_browser("olga").await;
    let (stranger, _, _) = app.ready_browser("pepe").await;
    let (project, artifact, key) = finished_project(&app, &owner_id, &pair.public_spki).await;

    let resp = owner
        .post_json(&format!("/api/artifacts/{artifact}/token"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    let grant: serde_json::Value = resp.json().await.unwrap();
    assert!(
        grant["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/objects/{key}"))
    );
    let ring = KeyRing::parse(env().get("KIROKU_EXPORT_KEYS").unwrap()).unwrap();
    let (_, claims) = kiroku_crypto::token::verify(
        &ring,
        Policy::default(),
        grant["token"].as_str().unwrap(),
        &key,
        unix_now(),
    )
    .expect("the token verifies for exactly this object");
    assert_eq!(claims.artifact_id, artifact.to_string());
    assert_eq!(claims.project_id, project.to_string());
    assert!(claims.exp - claims.iat <= 300);

    // Someone else's artifact, or one that does not exist: refused before
    // any token is made, indistinguishably.
    let foreign = stranger
        .post_json(&format!("/api/artifacts/{artifact}/token"), &json!({}))
        .await;
    assert_eq!(foreign.status(), 404);
    let missing = owner
        .post_json(
            &format!("/api/artifacts/{}/token", Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(missing.status(), 404);
    // The project page is the owner's only.
    assert_eq!(
        owner
            .http
            .get(format!("{}/projects/{project}", owner.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        stranger
            .http
            .get(format!("{}/projects/{project}", stranger.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Without the CSRF header, no token.
    let raw = owner
        .http
        .post(format!("{}/api/artifacts/{artifact}/token", owner.base))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn rename_checks_the_title_and_the_owner() {
    let app = TestApp::start(&[]).await;
    let (owner, owner_id, pair) = app.ready_browser("quim").await;
    let (stranger, _, _) = app.ready_browser("rosa").await;
    let (project, _, _) = finished_project(&app, &owner_id, &pair.public_spki).await;
    let rename = |title: &str| json!({ "project_id": project, "title": title });
    assert_eq!(
        owner
            .post_json("/api/project/rename", &rename("  Nueva  "))
            .await
            .status(),
        200
    );
    let title: String = sqlx::query_scalar("SELECT title FROM projects WHERE id = $1")
        .bind(project)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(title, "Nueva");
    for bad in ["", "   ", &"x".repeat(201), "a\u{7}b"] {
        assert_eq!(
            owner
                .post_json("/api/project/rename", &rename(bad))
                .await
                .status(),
            400,
            "{bad:?}"
        );
    }
    assert_eq!(
        stranger
            .post_json("/api/project/rename", &rename("Mía"))
            .await
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_project_removes_its_ciphertext_and_rows_through_a_worker() {
    let app = TestApp::start(&[]).await;
    let (owner, owner_id, pair) = app.ready_browser("sol").await;
    let (project, _, key) = finished_project(&app, &owner_id, &pair.public_spki).await;
    let worker_store = s3_store(&env(), Role::Worker);
    let ingest = format!("ingest/{owner_id}/{project}/chunks/000000");
    worker_store
        .put(&ingest, Bytes::from_static(b"audio"))
        .await
        .unwrap();

    let resp = owner
        .post_json("/api/project/delete", &json!({ "project_id": project }))
        .await;
    assert_eq!(resp.status(), 200);
    // Gone from the list and the page at once.
    let list = owner
        .http
        .get(format!("{}/projects", owner.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!list.contains(&project.to_string()));

    // The job is queued with the project id only.
    use fred::interfaces::StreamsInterface;
    let queue = kiroku_app::redis_pool(&app.config.queue_redis_url)
        .await
        .unwrap();
    let stream = kiroku_jobs::stream_for(&app.config.redis_prefix);
    let entries: Vec<(String, Vec<(String, String)>)> =
        queue.xrange(&stream, "-", "+", None).await.unwrap();
    let job = kiroku_jobs::from_fields(&entries.last().unwrap().1).unwrap();
    assert_eq!(job.kind, kiroku_jobs::JobKind::DeleteProject);
    assert_eq!(job.project_id, project);

    // A worker runs it (twice: it must be safe to repeat).
    let state = kiroku_tests::worker_for(&app, None).await;
    kiroku_pipeline::cleanup::delete_project(&state, project)
        .await
        .unwrap();
    kiroku_pipeline::cleanup::delete_project(&state, project)
        .await
        .unwrap();

    assert!(matches!(
        worker_store.head(&key).await,
        Err(kiroku_storage::StorageError::NotFound)
    ));
    assert!(matches!(
        worker_store.head(&ingest).await,
        Err(kiroku_storage::StorageError::NotFound)
    ));
    let artifacts: i64 = sqlx::query_scalar("SELECT count(*) FROM artifacts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(artifacts, 0);
    let status: String = sqlx::query_scalar("SELECT status FROM projects WHERE id = $1")
        .bind(project)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "deleted");
    // A project still recording cannot be deleted this way, nor someone else's.
    assert_eq!(
        owner
            .post_json(
                "/api/project/delete",
                &json!({ "project_id": Uuid::new_v4() })
            )
            .await
            .status(),
        404
    );
    state.db.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_worker_refuses_to_delete_a_project_not_marked_for_deletion() {
    let app = TestApp::start(&[]).await;
    let (_, owner_id, pair) = app.ready_browser("tina").await;
    let (project, _, key) = finished_project(&app, &owner_id, &pair.public_spki).await;
    let state = kiroku_tests::worker_for(&app, None).await;
    assert!(
        kiroku_pipeline::cleanup::delete_project(&state, project)
            .await
            .is_err()
    );
    let worker_store = s3_store(&env(), Role::Worker);
    assert!(
        worker_store.head(&key).await.is_ok(),
        "a ready project lost its artifact"
    );
    worker_store.delete(&key).await.unwrap();
    state.db.close().await;
    app.stop().await;
}
