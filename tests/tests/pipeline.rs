//! The processing pipeline on real PostgreSQL, Redis and SeaweedFS: a
//! stopped recording becomes sealed artifacts that only the owner's key
//! opens, and nothing else of the project is left in storage.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use kiroku_crypto::{envelope, userkey};
use kiroku_pipeline::process;
use kiroku_storage::Role;
use kiroku_tests::{Scripted, TestApp, env, fixture, s3_store, worker_for};
use uuid::Uuid;

/// WebM/Opus of a fixture, as a browser would record it.
fn webm_of(wav: &str) -> Vec<u8> {
    let out = std::env::temp_dir().join(format!("kiroku-{}.webm", Uuid::new_v4()));
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(fixture(wav))
        .args(["-c:a", "libopus", "-b:a", "32k", "-f", "webm"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).ok();
    bytes
}

/// A stopped recording as the app leaves it: chunks and photos in ingest,
/// their rows, and the project queued.
async fn stopped_recording(
    app: &TestApp,
    user_id: &str,
    audio: &[u8],
    photos: &[(&str, i64)],
) -> Uuid {
    let user: Uuid = user_id.parse().unwrap();
    let project = Uuid::new_v4();
    let chunks: Vec<&[u8]> = audio.chunks(audio.len().div_ceil(4)).collect();
    sqlx::query(
        "INSERT INTO projects (id, user_id, title, participant, language, status, last_seq, duration_ms)
         VALUES ($1, $2, 'La carta #1', 'Ana', 'es', 'queued', $3, 53000)",
    )
    .bind(project)
    .bind(user)
    .bind(chunks.len() as i32 - 1)
    .execute(&app.pool)
    .await
    .unwrap();
    let store = s3_store(&env(), Role::App);
    for (seq, c) in chunks.iter().enumerate() {
        let key = format!("ingest/{user}/{project}/chunks/{seq:06}");
        store.put(&key, Bytes::copy_from_slice(c)).await.unwrap();
        sqlx::query(
            "INSERT INTO chunks (project_id, seq, size, object_key) VALUES ($1, $2, $3, $4)",
        )
        .bind(project)
        .bind(seq as i32)
        .bind(c.len() as i32)
        .bind(&key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    for (name, offset) in photos {
        let id = Uuid::new_v4();
        let key = format!("ingest/{user}/{project}/photos/{id}");
        let bytes = std::fs::read(fixture(&format!("photos/{name}"))).unwrap();
        store.put(&key, Bytes::from(bytes.clone())).await.unwrap();
        sqlx::query(
            "INSERT INTO photos (id, project_id, offset_ms, content_type, size, object_key)
             VALUES ($1, $2, $3, 'image/jpeg', $4, $5)",
        )
        .bind(id)
        .bind(project)
        .bind(offset)
        .bind(bytes.len() as i32)
        .bind(&key)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    project
}

/// Runs the job chain the way the queue would, one job at a time.
async fn run_pipeline(worker: &kiroku_pipeline::WorkerState, project: Uuid) {
    process::prepare(worker, project).await.expect("prepare");
    let segments: i64 = sqlx::query_scalar("SELECT count(*) FROM segments WHERE project_id = $1")
        .bind(project)
        .fetch_one(&worker.db)
        .await
        .unwrap();
    assert!(segments >= 1);
    for _ in 0..segments {
        process::transcribe(worker, project)
            .await
            .expect("transcribe");
    }
    process::finalize(worker, project).await.expect("finalize");
}

/// Every artifact of the project, opened with the owner's private key.
async fn open_all(app: &TestApp, project: Uuid, pkcs8: &[u8]) -> Vec<(String, Vec<u8>)> {
    let private = userkey::parse_private_key(pkcs8).unwrap();
    let rows: Vec<(Uuid, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, kind, object_key, dek_enc FROM artifacts WHERE project_id = $1 ORDER BY kind",
    )
    .bind(project)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let store = s3_store(&env(), Role::Export);
    let mut out = Vec::new();
    for (id, kind, key, dek_enc) in rows {
        let object = store
            .get(&key, None)
            .await
            .unwrap()
            .into_bytes()
            .await
            .unwrap();
        let plain = envelope::open(&private, &id.to_string(), &kind, &dek_enc, &object).unwrap();
        out.push((kind, plain.to_vec()));
    }
    out
}

fn docx_text(bytes: &[u8]) -> String {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("DOCX is a zip");
    let mut xml = String::new();
    zip.by_name("word/document.xml")
        .unwrap()
        .read_to_string(&mut xml)
        .unwrap();
    xml
}

/// The text of a PDF as `pdftotext` (poppler-utils) reads it, in content
/// order, with line-end hyphens and all white space removed: justified lines
/// may break anywhere.
fn pdf_text(bytes: &[u8]) -> String {
    assert!(bytes.starts_with(b"%PDF"), "not a PDF");
    let path = std::env::temp_dir().join(format!("kiroku-{}.pdf", Uuid::new_v4()));
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("pdftotext")
        .args(["-raw", "-enc", "UTF-8"])
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) is needed");
    std::fs::remove_file(&path).ok();
    assert!(out.status.success(), "pdftotext failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .replace("-\n", "")
        .replace("\u{ad}\n", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

fn squeezed(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

async fn leftovers(user_id: &str, project: Uuid) -> Vec<String> {
    let store = s3_store(&env(), Role::Worker);
    let mut keys = store
        .list(&format!("ingest/{user_id}/{project}/"))
        .await
        .unwrap();
    keys.extend(store.list(&format!("work/{project}/")).await.unwrap());
    keys
}

#[tokio::test]
async fn a_stopped_recording_becomes_sealed_artifacts_and_nothing_else_remains() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, pair) = app.ready_browser("ana").await;
    let audio = webm_of("routine-es.wav");
    let project = stopped_recording(
        &app,
        &user_id,
        &audio,
        &[("astronaut.jpg", 5_000), ("rocket.jpg", 30_000)],
    )
    .await;
    let words = Scripted::new(&["Buenas noches.", "Piense en una carta."]);
    let worker = worker_for(&app, Some(Arc::new(words))).await;
    run_pipeline(&worker, project).await;

    let status: String = sqlx::query_scalar("SELECT status FROM projects WHERE id = $1")
        .bind(project)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "ready");
    let files = open_all(&app, project, &pair.private_pkcs8).await;
    let kinds: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, vec!["docx", "html", "md", "pdf"]);
    for (kind, bytes) in &files {
        match kind.as_str() {
            "md" => {
                let md = std::str::from_utf8(bytes).unwrap();
                assert!(md.starts_with("# La carta \\#1\n"), "{}", &md[..40]);
                assert_eq!(md.matches("data:image/jpeg;base64,").count(), 2);
                assert!(md.contains("Piense en una carta."));
            }
            "html" => {
                let html = std::str::from_utf8(bytes).unwrap();
                assert!(html.starts_with("<!doctype html>"));
                assert_eq!(html.matches("<figure>").count(), 2);
            }
            "docx" => assert!(docx_text(bytes).contains("Piense en una carta.")),
            "pdf" => {
                let text = pdf_text(bytes);
                assert!(text.contains("Lacarta#1"), "{text}");
                assert!(text.contains("Buenasnoches.") && text.contains("Pienseenunacarta."));
                assert!(
                    text.contains("Foto1·0:05") && text.contains("Foto2·0:30"),
                    "{text}"
                );
            }
            _ => unreachable!(),
        }
    }
    // The stored photos were re-encoded: their metadata is gone.
    let html = String::from_utf8(files[1].1.clone()).unwrap();
    assert!(!html.contains("Exif"));

    assert_eq!(leftovers(&user_id, project).await, Vec::<String>::new());
    let kept: Option<i32> = sqlx::query_scalar("SELECT photo_count FROM projects WHERE id = $1")
        .bind(project)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, Some(2), "the photo count must outlive the photo rows");
    for table in ["chunks", "photos", "segments", "transcript_lines"] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE project_id = $1"
        ))
        .bind(project)
        .fetch_one(&worker.db)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} rows left");
    }

    // Running finalize again changes nothing; there is still one set.
    process::finalize(&worker, project).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM artifacts WHERE project_id = $1")
        .bind(project)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 4);
    worker.db.close().await;
    app.stop().await;
}

#[tokio::test]
async fn hostile_transcript_text_appears_literally_in_every_format() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, pair) = app.ready_browser("eva").await;
    let nasty = "#set page(width: 1pt) #import \"x\" </p><script>alert(1)</script> $x$ \
                 [a](javascript:alert(1)) back\\slash *star* _under_ @ref";
    let audio = webm_of("routine-en.wav");
    let project = stopped_recording(&app, &user_id, &audio, &[]).await;
    let worker = worker_for(&app, Some(Arc::new(Scripted::new(&[nasty])))).await;
    run_pipeline(&worker, project).await;
    for (kind, bytes) in open_all(&app, project, &pair.private_pkcs8).await {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match kind.as_str() {
            "html" => {
                assert!(
                    !text.contains("<script>alert(1)</script>"),
                    "script survived in HTML"
                );
                assert!(text.contains("&lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt; $x$ [a](javascript:alert(1)) back\\slash *star* _under_ @ref"));
                assert!(text.contains("#set page(width: 1pt) #import &quot;x&quot;"));
            }
            "md" => {
                assert!(text.contains(
                    r#"\#set page(width: 1pt) \#import "x" \</p\>\<script\>alert(1)\</script\> \$x\$ \[a\](javascript:alert(1)) back\\slash \*star\* \_under\_ @ref"#
                ));
            }
            "docx" => {
                let xml = docx_text(&bytes);
                assert!(xml.contains("#set page(width: 1pt) #import &quot;x&quot; &lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt; $x$ [a](javascript:alert(1)) back\\slash *star* _under_ @ref"), "{xml}");
            }
            "pdf" => {
                let pdf = pdf_text(&bytes);
                assert!(pdf.contains(&squeezed(nasty)), "{pdf}");
            }
            _ => unreachable!(),
        }
    }
    worker.db.close().await;
    app.stop().await;
}

#[tokio::test]
async fn without_a_speech_engine_the_project_fails_clearly_and_keeps_its_recording() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("ivo").await;
    let project = stopped_recording(&app, &user_id, &webm_of("routine-es.wav"), &[]).await;
    let worker = worker_for(&app, None).await;
    process::prepare(&worker, project).await.unwrap();
    let err = process::transcribe(&worker, project).await.unwrap_err();
    assert!(format!("{err:#}").contains("no speech engine"), "{err:#}");
    process::mark_failed(&worker, project, &format!("{err:#}"))
        .await
        .unwrap();
    let (status, failure): (String, Option<String>) =
        sqlx::query_as("SELECT status, failure FROM projects WHERE id = $1")
            .bind(project)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(failure.unwrap().contains("no speech engine"));
    // Nothing was deleted: a retry can still succeed.
    let chunks = s3_store(&env(), Role::Worker)
        .list(&format!("ingest/{user_id}/{project}/chunks/"))
        .await
        .unwrap();
    assert_eq!(chunks.len(), 4);
    for k in leftovers(&user_id, project).await {
        s3_store(&env(), Role::Worker).delete(&k).await.unwrap();
    }
    worker.db.close().await;
    app.stop().await;
}

#[tokio::test]
async fn an_incomplete_recording_is_refused_before_anything_is_decoded() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("olivia").await;
    let project = stopped_recording(&app, &user_id, &webm_of("routine-es.wav"), &[]).await;
    sqlx::query("UPDATE projects SET last_seq = 9 WHERE id = $1")
        .bind(project)
        .execute(&app.pool)
        .await
        .unwrap();
    let worker = worker_for(&app, None).await;
    let err = process::prepare(&worker, project).await.unwrap_err();
    assert!(format!("{err}").contains("incomplete"));
    for k in leftovers(&user_id, project).await {
        s3_store(&env(), Role::Worker).delete(&k).await.unwrap();
    }
    worker.db.close().await;
    app.stop().await;
}
