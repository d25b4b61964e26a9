//! The three binaries start against the real services and report ready;
//! `kiroku doctor` catches an over-privileged credential.

use kiroku_tests::{Service, TestDb, env, free_port, wait_ready};

fn s3_overrides(db: &TestDb) -> Vec<(&'static str, String)> {
    vec![
        ("KIROKU_STORAGE", "s3".into()),
        ("KIROKU_APP_DATABASE_URL", db.app_url.clone()),
        ("KIROKU_WORKER_DATABASE_URL", db.worker_url.clone()),
        ("KIROKU_LOG", "warn".into()),
        (
            "KIROKU_REDIS_PREFIX",
            format!("kiroku-smoke-{}", kiroku_tests::unique()),
        ),
    ]
}

#[tokio::test]
async fn app_worker_and_export_start_and_answer_readyz() {
    let env = env();
    let db = TestDb::create(&env).await;
    let (app_port, worker_port, export_port) = (free_port(), free_port(), free_port());
    let mut o = s3_overrides(&db);
    o.push(("KIROKU_APP_LISTEN", format!("127.0.0.1:{app_port}")));
    o.push(("KIROKU_WORKER_LISTEN", format!("127.0.0.1:{worker_port}")));
    o.push(("KIROKU_EXPORT_LISTEN", format!("127.0.0.1:{export_port}")));
    let app = Service::start("kiroku", &["serve"], &o);
    let worker = Service::start("kiroku-worker", &[], &o);
    let export = Service::start("kiroku-export", &[], &o);

    for (name, port) in [
        ("app", app_port),
        ("worker", worker_port),
        ("export", export_port),
    ] {
        let body = wait_ready(&format!("http://127.0.0.1:{port}/readyz"), 30)
            .await
            .unwrap_or_else(|e| panic!("{name} not ready: {e}"));
        assert!(body.contains("storage: ok"), "{name}: {body}");
    }

    // Every response carries a request id, and a client cannot choose it.
    let resp = kiroku_tests::http_client()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{app_port}/login"))
        .header("x-request-id", "chosen-by-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID request id: {id}");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    for svc in [app, worker, export] {
        let name = svc.name;
        assert!(svc.stop().success(), "{name} did not shut down cleanly");
    }
    db.drop_db(&env).await;
}

#[tokio::test]
async fn a_service_with_bad_configuration_names_the_variable() {
    let out = std::process::Command::new(kiroku_tests::bin_dir().join("kiroku-export"))
        .env("KIROKU_EXPORT_KEYS", "k1:short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KIROKU_EXPORT_KEYS is invalid"), "{err}");
}

async fn doctor(overrides: &[(&str, String)]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(kiroku_tests::bin_dir().join("kiroku"));
    cmd.arg("doctor");
    for (k, v) in overrides {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn doctor_passes_as_configured_and_fails_an_over_privileged_key() {
    let env = env();
    let db = TestDb::create(&env).await;
    let o = s3_overrides(&db);
    let (ok, out) = doctor(&o).await;
    assert!(ok, "doctor failed on the designed setup:\n{out}");
    assert!(
        out.contains("app S3 key: has exactly its permissions"),
        "{out}"
    );

    // Hand the app the worker's key: it can read and list, and doctor says so.
    let mut bad = o.clone();
    bad.push((
        "KIROKU_APP_S3_ACCESS_KEY_ID",
        env.get("KIROKU_WORKER_S3_ACCESS_KEY_ID").unwrap().into(),
    ));
    bad.push((
        "KIROKU_APP_S3_SECRET_ACCESS_KEY",
        env.get("KIROKU_WORKER_S3_SECRET_ACCESS_KEY")
            .unwrap()
            .into(),
    ));
    let (ok, out) = doctor(&bad).await;
    assert!(!ok, "doctor accepted an over-privileged app key:\n{out}");
    assert!(
        out.contains("FAIL app S3 key: can read under ingest/"),
        "{out}"
    );
    assert!(out.contains("FAIL app S3 key: can list ingest/"), "{out}");

    // And an export key that can write.
    let mut bad = o.clone();
    bad.push((
        "KIROKU_EXPORT_S3_ACCESS_KEY_ID",
        env.get("KIROKU_WORKER_S3_ACCESS_KEY_ID").unwrap().into(),
    ));
    bad.push((
        "KIROKU_EXPORT_S3_SECRET_ACCESS_KEY",
        env.get("KIROKU_WORKER_S3_SECRET_ACCESS_KEY")
            .unwrap()
            .into(),
    ));
    let (ok, out) = doctor(&bad).await;
    assert!(!ok);
    assert!(
        out.contains("FAIL export S3 key: can write under final/v1/"),
        "{out}"
    );
    db.drop_db(&env).await;
}
