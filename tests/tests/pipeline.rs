//! The processing pipeline on real PostgreSQL, Redis and SeaweedFS: a
//! stopped recording becomes sealed artifacts that only the owner's key
//! opens, and nothing else of the project is left in storage.

use std::io::Read;
use std::sync::Arc;

use kiroku_pipeline::process;
use kiroku_storage::Role;
use kiroku_tests::pipeline::{
    count, leftovers, looped_webm, open_all, run_pipeline, stopped_recording, stopped_recording_of,
    webm_of,
};
use kiroku_tests::{Scripted, TestApp, env, s3_store, worker_for};
use uuid::Uuid;

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

#[tokio::test]
async fn a_chunk_that_lands_after_stop_is_left_out_of_the_recording() {
    // Stopped from another device while this one still had a chunk on the
    // wire: the chunk is stored after `stop` fixed the last one.
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("pia").await;
    let audio = webm_of("routine-es.wav");
    let project = stopped_recording(&app, &user_id, &audio, &[]).await;
    let late = format!("ingest/{user_id}/{project}/chunks/000004");
    s3_store(&env(), Role::App)
        .put(&late, bytes::Bytes::from_static(b"not audio at all"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO chunks (project_id, seq, size, object_key) VALUES ($1, 4, 16, $2)")
        .bind(project)
        .bind(&late)
        .execute(&app.pool)
        .await
        .unwrap();
    let worker = worker_for(&app, None).await;
    process::prepare(&worker, project).await.unwrap();
    let (samples_ms,): (Option<i64>,) =
        sqlx::query_as("SELECT max(end_ms) FROM segments WHERE project_id = $1")
            .bind(project)
            .fetch_one(&worker.db)
            .await
            .unwrap();
    // Prepared (not refused as "incomplete" for a row too many), from
    // exactly the chunks up to last_seq.
    let expected = (decoded_samples(&audio) * 1000 / 16_000) as i64;
    assert_eq!(samples_ms, Some(expected));
    let store = s3_store(&env(), Role::Worker);
    for k in leftovers(&user_id, project).await {
        store.delete(&k).await.unwrap();
    }
    worker.db.close().await;
    app.stop().await;
}

/// Samples ffmpeg makes of `audio` in one go (16 kHz mono).
fn decoded_samples(audio: &[u8]) -> usize {
    use std::io::Write;
    let mut ffmpeg = std::process::Command::new("ffmpeg")
        .args([
            "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", "16000", "-f", "s16le", "pipe:1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ffmpeg.stdin.take().unwrap();
    let audio = audio.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&audio).unwrap());
    let out = ffmpeg.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    out.stdout.len() / 2
}

#[tokio::test]
async fn a_long_recording_is_cut_into_segments_that_tile_it_exactly() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("teo").await;
    // 200 s in 20 chunks: the segments cross chunk boundaries everywhere.
    let audio = looped_webm("routine-es.wav", 200);
    // The browser's clock said 180 s (a resumed recording only estimates).
    let project = stopped_recording_of(&app, &user_id, &audio, 20, 180_000, &[]).await;
    let worker = worker_for(&app, None).await;
    process::prepare(&worker, project).await.unwrap();

    let rows: Vec<(i32, i64, i64, String)> = sqlx::query_as(
        "SELECT idx, start_ms, end_ms, object_key FROM segments WHERE project_id = $1 ORDER BY idx",
    )
    .bind(project)
    .fetch_all(&worker.db)
    .await
    .unwrap();
    assert!(
        rows.len() >= 5,
        "200 s in segments of at most 40 s: {}",
        rows.len()
    );
    let store = s3_store(&env(), Role::Worker);
    let mut expected_start = 0;
    let mut samples = 0;
    for (i, (idx, start_ms, end_ms, key)) in rows.iter().enumerate() {
        assert_eq!(*idx, i as i32);
        assert_eq!(
            *start_ms, expected_start,
            "segment {idx} starts where the last ended"
        );
        assert!(
            end_ms - start_ms <= 40_000,
            "segment {idx} is {} ms",
            end_ms - start_ms
        );
        let wav = store
            .get(key, None)
            .await
            .unwrap()
            .into_bytes()
            .await
            .unwrap();
        let pcm = process::segment::wav_samples(&wav).expect("a 16 kHz mono WAV");
        // The rows' times are the objects' sample offsets in milliseconds.
        let ms = |samples: usize| (samples * 1000 / 16_000) as i64;
        assert_eq!((*start_ms, *end_ms), (ms(samples), ms(samples + pcm.len())));
        samples += pcm.len();
        expected_start = *end_ms;
    }
    // Nothing lost or repeated: the segments hold exactly what a decode of
    // the whole recording gives.
    assert_eq!(samples, decoded_samples(&audio));
    let (step, total, duration_ms): (String, i32, i64) =
        sqlx::query_as("SELECT step, step_total, duration_ms FROM projects WHERE id = $1")
            .bind(project)
            .fetch_one(&worker.db)
            .await
            .unwrap();
    assert_eq!((step.as_str(), total), ("transcribe", rows.len() as i32));
    // The documents' duration is the decoded audio's, not the estimate.
    assert_eq!(duration_ms, expected_start);
    for k in leftovers(&user_id, project).await {
        store.delete(&k).await.unwrap();
    }
    worker.db.close().await;
    app.stop().await;
}

#[tokio::test]
async fn audio_that_does_not_decode_fails_prepare_and_keeps_the_chunks() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("uma").await;
    let garbage: Vec<u8> = b"this is no recording at all "
        .iter()
        .copied()
        .cycle()
        .take(40_000)
        .collect();
    let project = stopped_recording_of(&app, &user_id, &garbage, 4, 40_000, &[]).await;
    let worker = worker_for(&app, None).await;
    let err = process::prepare(&worker, project).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("could not be decoded"),
        "{err:#}"
    );
    let segments: i64 = sqlx::query_scalar("SELECT count(*) FROM segments WHERE project_id = $1")
        .bind(project)
        .fetch_one(&worker.db)
        .await
        .unwrap();
    assert_eq!(segments, 0);
    let left = leftovers(&user_id, project).await;
    assert_eq!(
        left.iter().filter(|k| k.contains("/chunks/")).count(),
        4,
        "the chunks stay for a retry: {left:?}"
    );
    assert!(left.iter().all(|k| !k.starts_with("work/")), "{left:?}");
    for k in left {
        s3_store(&env(), Role::Worker).delete(&k).await.unwrap();
    }
    worker.db.close().await;
    app.stop().await;
}

#[tokio::test]
async fn spoken_inner_life_cues_become_a_labelled_block_in_every_format() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, pair) = app.ready_browser("rio").await;
    let audio = webm_of("routine-es.wav");
    let project = stopped_recording(&app, &user_id, &audio, &[]).await;
    let said = Scripted::new(&[
        "Piense en un número.",
        "Vida interna: ya sé que dirá treinta y siete.",
        "Vuelvo al show. ¿Es correcto?",
    ]);
    let worker = worker_for(&app, Some(Arc::new(said))).await;
    run_pipeline(&worker, project).await;
    for (kind, bytes) in open_all(&app, project, &pair.private_pkcs8).await {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match kind.as_str() {
            "md" => assert!(
                text.contains(
                    "> **Vida interna**\n>\n> Ya sé que dirá treinta y siete.\n\n¿Es correcto?"
                ),
                "{text}"
            ),
            "html" => assert!(
                text.contains(
                    "<p class=\"inner inner-label\">Vida interna</p>\n\
                     <p class=\"inner\">Ya sé que dirá treinta y siete.</p>\n<p>¿Es correcto?"
                ),
                "{text}"
            ),
            "docx" => {
                let xml = docx_text(&bytes);
                let label = xml.find("Vida interna").expect("label in the DOCX");
                let inner = xml
                    .find("Ya sé que dirá treinta y siete.")
                    .expect("inner text");
                assert!(label < inner);
                let styled = &xml[..inner];
                assert!(
                    styled[styled
                        .rfind("<w:p>")
                        .or_else(|| styled.rfind("<w:p "))
                        .unwrap()..]
                        .contains("w:val=\"InnerLife\""),
                    "the inner text's paragraph has the InnerLife style"
                );
                assert!(!xml.to_lowercase().contains("vuelvo al show"));
            }
            "pdf" => {
                let pdf = pdf_text(&bytes);
                assert!(
                    pdf.contains("VIDAINTERNA") && pdf.contains("Yaséquedirátreintaysiete."),
                    "{pdf}"
                );
                assert!(!pdf.to_lowercase().contains("vuelvoalshow"), "{pdf}");
            }
            _ => unreachable!(),
        }
        if kind == "md" || kind == "html" {
            // (The DOCX and PDF texts are checked above, uncompressed.)
            assert!(
                !text.to_lowercase().contains("vida interna:"),
                "the cue itself is left out of the {kind}"
            );
        }
    }
    worker.db.close().await;
    app.stop().await;
}

/// The photos embedded in an HTML script, decoded.
fn html_photos(html: &str) -> Vec<image::RgbImage> {
    use base64::Engine;
    html.split("data:image/jpeg;base64,")
        .skip(1)
        .map(|rest| {
            let b64 = &rest[..rest.find('"').expect("end of the data URL")];
            let jpeg = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            image::load_from_memory(&jpeg).unwrap().to_rgb8()
        })
        .collect()
}

/// The share of pixels whose colour is neither grey nor sepia: a photo has
/// many, a drawing in ink on paper almost none.
fn colourful(img: &image::RgbImage) -> f64 {
    let vivid = img
        .pixels()
        .filter(|p| {
            let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
            // Sepia runs r ≥ g ≥ b with small steps; anything else is colour.
            g - r > 12 || b - g > 12 || r - b > 60
        })
        .count();
    vivid as f64 / img.pixels().len() as f64
}

#[tokio::test]
async fn the_stylize_switch_draws_the_photos_and_without_it_they_stay_photos() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, pair) = app.ready_browser("eva").await;
    let audio = webm_of("routine-es.wav");
    let worker = worker_for(&app, Some(Arc::new(Scripted::new(&["Mire esta taza."])))).await;
    let mut vividness = Vec::new();
    for stylize in [true, false] {
        let project = stopped_recording(&app, &user_id, &audio, &[("coffee.jpg", 2_000)]).await;
        sqlx::query("UPDATE projects SET stylize = $2 WHERE id = $1")
            .bind(project)
            .bind(stylize)
            .execute(&app.owner_pool().await)
            .await
            .unwrap();
        run_pipeline(&worker, project).await;
        let files = open_all(&app, project, &pair.private_pkcs8).await;
        let html = files.iter().find(|(k, _)| k == "html").unwrap();
        let photos = html_photos(std::str::from_utf8(&html.1).unwrap());
        assert_eq!(photos.len(), 1);
        vividness.push(colourful(&photos[0]));
    }
    let (drawn, photo) = (vividness[0], vividness[1]);
    assert!(
        drawn < 0.02,
        "the styled photo is ink on paper ({drawn} colourful)"
    );
    assert!(
        photo > 0.2,
        "the unstyled photo keeps its colours ({photo} colourful)"
    );
    worker.db.close().await;
    app.stop().await;
}

/// The app's queue stream, to count the jobs on it.
struct Jobs {
    redis: fred::clients::Pool,
    stream: String,
}

impl Jobs {
    async fn of(app: &TestApp) -> Jobs {
        Jobs {
            redis: kiroku_app::redis_pool(&app.config.queue_redis_url)
                .await
                .unwrap(),
            stream: kiroku_jobs::stream_for(&app.config.redis_prefix),
        }
    }

    /// The jobs of `kind` for `project` added to the stream so far.
    async fn count(&self, kind: &str, project: Uuid) -> usize {
        let jobs: Vec<(String, std::collections::HashMap<String, String>)> =
            fred::interfaces::StreamsInterface::xrange(&self.redis, &self.stream, "-", "+", None)
                .await
                .unwrap();
        let project = project.to_string();
        jobs.iter()
            .filter(|(_, f)| f.values().any(|v| v == kind) && f.values().any(|v| *v == project))
            .count()
    }
}

#[tokio::test]
async fn segments_are_queued_as_they_are_cut_and_finalize_waits_for_the_last_cut() {
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("lia").await;
    let audio = looped_webm("routine-es.wav", 100);
    let project = stopped_recording_of(&app, &user_id, &audio, 10, 100_000, &[]).await;
    let worker = worker_for(&app, Some(Arc::new(Scripted::new(&["Hola."])))).await;
    let jobs = Jobs::of(&app).await;
    // Watched from beside it: a segment's job is on the queue while later
    // segments are still being decoded (the segments are counted after the
    // queue, so a count below the final one means the cut was not over).
    let preparing = tokio::spawn({
        let worker = worker.clone();
        async move { process::prepare(&worker, project).await }
    });
    let segments = "SELECT count(*) FROM segments WHERE project_id = $1";
    let mut fewest_with_a_job = i64::MAX;
    while !preparing.is_finished() {
        let queued = jobs.count("transcribe", project).await;
        let stored = count(&worker.db, segments, project).await;
        if queued > 0 {
            fewest_with_a_job = fewest_with_a_job.min(stored);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    preparing.await.unwrap().unwrap();
    let n = count(&worker.db, segments, project).await;
    assert!(
        fewest_with_a_job < n,
        "no transcription was queued before the last of {n} segments was cut"
    );
    assert!(n >= 3, "{n} segments");
    assert_eq!(jobs.count("transcribe", project).await, n as usize);

    // As if the cutting were still going on when every segment so far is
    // transcribed: the project must not move on to finalize.
    let owner = app.owner_pool().await;
    let set_step = |step: &'static str| {
        let owner = owner.clone();
        async move {
            sqlx::query(
                "UPDATE projects SET step = $2, step_done = 0, step_total = 1 WHERE id = $1",
            )
            .bind(project)
            .bind(step)
            .execute(&owner)
            .await
            .unwrap();
        }
    };
    set_step("prepare").await;
    for _ in 0..n {
        process::transcribe(&worker, project).await.unwrap();
    }
    let state = || async {
        sqlx::query_as::<_, (String, i32, i32)>(
            "SELECT step, step_done, step_total FROM projects WHERE id = $1",
        )
        .bind(project)
        .fetch_one(&worker.db)
        .await
        .unwrap()
    };
    assert_eq!(state().await, ("prepare".to_owned(), 0, 1));
    assert_eq!(jobs.count("finalize", project).await, 0);
    // A stray transcription job finds nothing to do and changes nothing.
    process::transcribe(&worker, project).await.unwrap();
    assert_eq!(jobs.count("finalize", project).await, 0);

    // The end of the cutting finds them all done and moves on, once, however
    // often it is repeated (a retried job).
    process::all_segments_cut(&worker, project, n as i32)
        .await
        .unwrap();
    assert_eq!(state().await.0, "finalize");
    process::all_segments_cut(&worker, project, n as i32)
        .await
        .unwrap();
    assert_eq!(jobs.count("finalize", project).await, 1);
    // A job with nothing to do (redelivered after its worker died between
    // moving the step and queueing finalize, say) queues finalize again:
    // finalize runs take turns, so a second one changes nothing.
    process::transcribe(&worker, project).await.unwrap();
    assert_eq!(state().await.0, "finalize");
    assert_eq!(jobs.count("finalize", project).await, 2);

    // The other order: the cut ends first, with a segment still open; the
    // progress counts those done, and the last transcription moves on.
    set_step("prepare").await;
    sqlx::query("UPDATE segments SET status = 'pending' WHERE project_id = $1 AND idx = $2")
        .bind(project)
        .bind((n - 1) as i32)
        .execute(&owner)
        .await
        .unwrap();
    process::all_segments_cut(&worker, project, n as i32)
        .await
        .unwrap();
    assert_eq!(
        state().await,
        ("transcribe".to_owned(), (n - 1) as i32, n as i32)
    );
    assert_eq!(jobs.count("finalize", project).await, 2);
    process::transcribe(&worker, project).await.unwrap();
    assert_eq!(state().await.0, "finalize");
    assert_eq!(jobs.count("finalize", project).await, 3);

    // A prepare job handed out again after the cut (its worker died before
    // acknowledging it) resumes: nothing is cut again, and finalize, which
    // the dead run may never have queued, is queued.
    let lines = "SELECT count(*) FROM transcript_lines WHERE project_id = $1";
    let lines_before = count(&worker.db, lines, project).await;
    process::prepare(&worker, project).await.unwrap();
    assert_eq!(state().await.0, "finalize");
    assert_eq!(jobs.count("finalize", project).await, 4);
    assert_eq!(jobs.count("transcribe", project).await, n as usize);
    assert_eq!(count(&worker.db, lines, project).await, lines_before);

    // While another run holds the project, prepare refuses to start (the
    // queue tries again later) and changes nothing.
    {
        use sqlx::Connection;
        let mut other = owner.acquire().await.unwrap().detach();
        sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .bind(format!("kiroku:prepare:{project}"))
            .execute(&mut other)
            .await
            .unwrap();
        let err = process::prepare(&worker, project).await.unwrap_err();
        assert!(format!("{err}").contains("still being prepared"), "{err}");
        assert_eq!(jobs.count("finalize", project).await, 4);
        other.close().await.unwrap();
    }

    process::finalize(&worker, project).await.unwrap();
    assert!(leftovers(&user_id, project).await.is_empty());
    owner.close().await;
    worker.db.close().await;
    app.stop().await;
}
