//! Zero-knowledge accounts against real PostgreSQL and Redis: first login,
//! key setup, sessions, CSRF, rate limits, password change.

use kiroku_crypto::kdf::KdfParams;
use kiroku_crypto::{b64, envelope, userkey};
use kiroku_tests::{Browser, TestApp, meta_csrf};
use serde_json::json;

const FLOOR: KdfParams = KdfParams::FLOOR;
const NEW_PASSWORD: &str = "ensayo de la función 2026";

/// First login with the temporary password, then key setup.
async fn set_up_user(app: &TestApp, name: &str) -> (Browser, String, userkey::KeyPair) {
    let temp = app.add_user(name).await;
    let mut b = app.browser();
    b.open_login().await;
    let (status, answer) = b.login(name, &temp).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "setup");
    assert!(answer["private_key_enc"].is_null());
    let user_id = answer["user_id"].as_str().unwrap().to_owned();
    let (status, pair) = b.setup(&user_id, NEW_PASSWORD, FLOOR).await;
    assert_eq!(status, 200);
    (b, user_id, pair)
}

#[tokio::test]
async fn first_login_setup_logout_login_round_trip() {
    let app = TestApp::start(&[]).await;
    let temp = app.add_user("ana").await;
    let mut b = app.browser();
    b.open_login().await;

    // A temporary-password session may only reach key setup.
    let (status, answer) = b.login("ana", &temp).await;
    assert_eq!(status, 200);
    assert_eq!(answer["state"], "setup");
    assert_eq!(b.page("/projects").await.headers()["location"], "/setup");
    assert_eq!(b.page("/setup").await.status(), 200);
    let user_id = answer["user_id"].as_str().unwrap().to_owned();
    let (status, pair) = b.setup(&user_id, NEW_PASSWORD, FLOOR).await;
    assert_eq!(status, 200);
    assert_eq!(b.page("/projects").await.status(), 200);

    // The server holds the public key as sent, and only a wrapped private key.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT public_key FROM user_public_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, pair.public_spki);

    // Logout ends the session.
    let html = b.page("/projects").await.text().await.unwrap();
    let csrf = meta_csrf(&html).unwrap();
    let resp = b
        .http
        .post(format!("{}/logout", b.base))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(b.page("/projects").await.headers()["location"], "/login");

    // Login with the new password gives back the wrapped key, which opens
    // with the kek derived in the "browser".
    b.open_login().await;
    let (status, answer) = b.login("ana", NEW_PASSWORD).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "ready");
    assert!(answer["upgrade"].is_null());
    let wrapped = b64::decode(answer["private_key_enc"].as_str().unwrap()).unwrap();
    let kek = b.derive("ana", NEW_PASSWORD).await.kek;
    let pkcs8 = userkey::unwrap(&kek, &user_id, &wrapped).unwrap();
    assert_eq!(pkcs8.as_slice(), pair.private_pkcs8.as_slice());
    app.stop().await;
}

#[tokio::test]
async fn wrong_password_unknown_user_and_reused_temporary_password_are_refused() {
    let app = TestApp::start(&[]).await;
    let temp = app.add_user("bea").await;
    let mut b = app.browser();
    b.open_login().await;
    assert_eq!(b.login("bea", "not the password").await.0, 401);
    assert_eq!(b.login("nobody", "whatever").await.0, 401);
    assert_eq!(b.page("/projects").await.headers()["location"], "/login");

    let (status, answer) = b.login("bea", &temp).await;
    assert_eq!(status, 200);
    let user_id = answer["user_id"].as_str().unwrap().to_owned();
    assert_eq!(b.setup(&user_id, NEW_PASSWORD, FLOOR).await.0, 200);
    // A second setup in the same session changes nothing.
    assert_eq!(
        b.setup(&user_id, "another password 123", FLOOR).await.0,
        409
    );

    let mut again = app.browser();
    again.open_login().await;
    assert_eq!(
        again.login("bea", &temp).await.0,
        401,
        "temporary password still works"
    );
    assert_eq!(again.login("bea", NEW_PASSWORD).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn session_id_changes_at_login_and_the_old_one_is_worthless() {
    let app = TestApp::start(&[]).await;
    let (_, _, _) = set_up_user(&app, "cris").await;
    let mut b = app.browser();
    b.open_login().await;
    let before = b
        .session_cookie()
        .expect("anonymous session for the login form");
    let (status, _) = b.login("cris", NEW_PASSWORD).await;
    assert_eq!(status, 200);
    let after = b.session_cookie().unwrap();
    assert_ne!(before, after, "session id not rotated at login");

    // An attacker who planted `before` gets nothing.
    let planted = Browser::new(&app.base);
    let url = app.base.parse().unwrap();
    planted
        .jar
        .add_cookie_str(&format!("kiroku_session={before}"), &url);
    let resp = planted
        .http
        .get(format!("{}/projects", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["location"], "/login");
    app.stop().await;
}

#[tokio::test]
async fn state_changing_requests_without_the_csrf_token_are_forbidden() {
    let app = TestApp::start(&[]).await;
    let (mut b, user_id, _) = set_up_user(&app, "dani").await;
    let good = b.csrf.clone();
    for token in ["", "forged-token"] {
        b.csrf = token.to_owned();
        for path in [
            "/api/auth/prelogin",
            "/api/auth/login",
            "/api/auth/setup",
            "/api/auth/password",
        ] {
            let resp = b.post_json(path, &json!({ "username": "dani" })).await;
            assert_eq!(resp.status(), 403, "{path} with token {token:?}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("CSRF"));
        }
        let resp = b
            .http
            .post(format!("{}/logout", b.base))
            .form(&[("csrf", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
    b.csrf = good;
    assert_eq!(
        b.page("/projects").await.status(),
        200,
        "still signed in: nothing changed"
    );
    let _ = user_id;
    app.stop().await;
}

#[tokio::test]
async fn prelogin_for_unknown_users_is_stable_and_shaped_like_a_real_answer() {
    let app = TestApp::start(&[]).await;
    set_up_user(&app, "elena").await;
    let mut b = app.browser();
    b.open_login().await;
    let real = b
        .post_json("/api/auth/prelogin", &json!({ "username": "elena" }))
        .await;
    let real: serde_json::Value = real.json().await.unwrap();
    let ghost1: serde_json::Value = b
        .post_json("/api/auth/prelogin", &json!({ "username": "ghost" }))
        .await
        .json()
        .await
        .unwrap();
    let ghost2: serde_json::Value = b
        .post_json("/api/auth/prelogin", &json!({ "username": "ghost" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ghost1, ghost2, "unknown-user answer must be stable");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&real), keys(&ghost1));
    assert_eq!(
        b64::decode(ghost1["salt"].as_str().unwrap()).unwrap().len(),
        16
    );
    assert_eq!(ghost1["m_kib"], app.config.kdf_default.m_kib);
    let other: serde_json::Value = b
        .post_json("/api/auth/prelogin", &json!({ "username": "ghost2" }))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(other["salt"], ghost1["salt"]);
    app.stop().await;
}

#[tokio::test]
async fn login_rate_limit_trips_per_account_and_recovers() {
    let app = TestApp::start(&[
        ("KIROKU_LOGIN_LIMIT_PER_ACCOUNT", "3"),
        ("KIROKU_LOGIN_WINDOW_SECS", "2"),
    ])
    .await;
    set_up_user(&app, "fede").await;
    set_up_user(&app, "gala").await;
    let mut b = app.browser();
    b.open_login().await;
    for _ in 0..3 {
        assert_eq!(b.login("fede", "wrong guess").await.0, 401);
    }
    // Locked: even the right password waits.
    assert_eq!(b.login("fede", NEW_PASSWORD).await.0, 429);
    // Someone else's account is not affected by fede's typos.
    assert_eq!(b.login("gala", NEW_PASSWORD).await.0, 200);
    // After the window, the right password works again.
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let mut c = app.browser();
    c.open_login().await;
    assert_eq!(c.login("fede", NEW_PASSWORD).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn per_address_limit_stops_a_flood_across_accounts() {
    let app = TestApp::start(&[("KIROKU_LOGIN_LIMIT_PER_ADDRESS", "5")]).await;
    let mut b = app.browser();
    b.open_login().await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        statuses.push(b.login(&format!("user{i}"), "guess").await.0);
    }
    assert_eq!(&statuses[..5], &[401; 5]);
    assert_eq!(&statuses[5..], &[429, 429]);
    app.stop().await;
}

#[tokio::test]
async fn bad_setup_bodies_are_refused_and_change_nothing() {
    let app = TestApp::start(&[]).await;
    let temp = app.add_user("hugo").await;
    let mut b = app.browser();
    b.open_login().await;
    let (_, answer) = b.login("hugo", &temp).await;
    let user_id = answer["user_id"].as_str().unwrap().to_owned();
    let pair = userkey::generate().unwrap();
    let good = || {
        json!({
            "public_key": b64::encode(&pair.public_spki),
            "private_key_enc": b64::encode(vec![7u8; 1250]),
            "salt": b64::encode([1u8; 16]),
            "m_kib": FLOOR.m_kib, "t": FLOOR.t, "p": FLOOR.p,
            "auth": b64::encode([2u8; 32]),
        })
    };
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("below the floor", {
            let mut v = good();
            v["t"] = json!(1);
            v
        }),
        ("short salt", {
            let mut v = good();
            v["salt"] = json!(b64::encode([1u8; 8]));
            v
        }),
        ("short auth", {
            let mut v = good();
            v["auth"] = json!(b64::encode([1u8; 31]));
            v
        }),
        ("not a key", {
            let mut v = good();
            v["public_key"] = json!(b64::encode(b"junk"));
            v
        }),
        ("tiny wrapped key", {
            let mut v = good();
            v["private_key_enc"] = json!("AAAA");
            v
        }),
        ("not base64", {
            let mut v = good();
            v["auth"] = json!("%%%");
            v
        }),
        ("unknown field", {
            let mut v = good();
            v["admin"] = json!(true);
            v
        }),
        ("missing field", {
            let mut v = good();
            v.as_object_mut().unwrap().remove("salt");
            v
        }),
    ];
    for (what, body) in cases {
        let resp = b.post_json("/api/auth/setup", &body).await;
        assert_eq!(resp.status(), 400, "{what}");
        let msg: serde_json::Value = resp.json().await.unwrap();
        assert!(msg["error"].is_string(), "{what}: {msg}");
    }
    let huge = json!({ "blob": "x".repeat(200 * 1024) });
    assert_eq!(b.post_json("/api/auth/setup", &huge).await.status(), 413);
    let raw = b
        .http
        .post(format!("{}/api/auth/setup", b.base))
        .header("x-csrf-token", &b.csrf)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);

    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM user_public_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0, "a refused setup stored a key");
    // The temporary password still works: nothing was consumed.
    let mut again = app.browser();
    again.open_login().await;
    assert_eq!(again.login("hugo", &temp).await.1["state"], "setup");
    let _ = user_id;
    app.stop().await;
}

#[tokio::test]
async fn password_change_keeps_artifacts_sealed_before_it_readable() {
    let app = TestApp::start(&[]).await;
    let (b, user_id, pair) = set_up_user(&app, "ines").await;
    let public = userkey::parse_public_key(&pair.public_spki).unwrap();
    let sealed = envelope::seal(&public, "art-1", "md", b"# Guion\n").unwrap();

    let keys: serde_json::Value = b
        .http
        .get(format!("{}/api/account/keys", b.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old = b.derive("ines", NEW_PASSWORD).await;
    let wrapped = b64::decode(keys["private_key_enc"].as_str().unwrap()).unwrap();
    let pkcs8 = userkey::unwrap(&old.kek, &user_id, &wrapped).unwrap();

    // Wrong current password: refused, nothing changes.
    let salt = [9u8; 16];
    let newer = kiroku_crypto::kdf::derive("brand new secret 99", &salt, FLOOR).unwrap();
    let rewrapped = userkey::wrap(&newer.kek, &user_id, &pkcs8).unwrap();
    let body = |old_auth: &[u8]| {
        json!({
            "old_auth": b64::encode(old_auth),
            "auth": b64::encode(newer.auth.as_bytes()),
            "salt": b64::encode(salt),
            "m_kib": FLOOR.m_kib, "t": FLOOR.t, "p": FLOOR.p,
            "private_key_enc": b64::encode(&rewrapped),
        })
    };
    assert_eq!(
        b.post_json("/api/auth/password", &body(&[0u8; 32]))
            .await
            .status(),
        400
    );
    assert_eq!(
        b.post_json("/api/auth/password", &body(old.auth.as_bytes()))
            .await
            .status(),
        200
    );

    let mut c = app.browser();
    c.open_login().await;
    assert_eq!(
        c.login("ines", NEW_PASSWORD).await.0,
        401,
        "old password still works"
    );
    let (status, answer) = c.login("ines", "brand new secret 99").await;
    assert_eq!(status, 200);
    let kek = c.derive("ines", "brand new secret 99").await.kek;
    let wrapped = b64::decode(answer["private_key_enc"].as_str().unwrap()).unwrap();
    let pkcs8 = userkey::unwrap(&kek, &user_id, &wrapped).unwrap();
    let private = userkey::parse_private_key(&pkcs8).unwrap();
    let opened = envelope::open(&private, "art-1", "md", &sealed.dek_enc, &sealed.object).unwrap();
    assert_eq!(opened.as_slice(), b"# Guion\n");
    app.stop().await;
}

#[tokio::test]
async fn weaker_stored_parameters_ask_for_an_upgrade_at_login() {
    let app = TestApp::start(&[]).await;
    set_up_user(&app, "juan").await;
    let db = app.stop_keep_db().await;
    // The operator raises the default; the stored parameters are now weak.
    let app = TestApp::start_on(db, &[("KIROKU_KDF_T", "3")]).await;
    let mut b = app.browser();
    b.open_login().await;
    let (status, answer) = b.login("juan", NEW_PASSWORD).await;
    assert_eq!(status, 200);
    assert_eq!(answer["upgrade"], json!({ "m_kib": 19456, "t": 3, "p": 1 }));
    app.stop().await;
}
