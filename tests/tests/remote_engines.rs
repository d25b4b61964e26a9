//! The optional remote engines (OpenAI-compatible speech, image edit and
//! chat; Gemini images) against a local stand-in that checks their real
//! wire format ([`kiroku_tests::standin`]): the requests they send, the
//! answers they read, and what they do on 429, 500, timeouts and malformed
//! bodies. Then the whole pipeline on real PostgreSQL, Redis and SeaweedFS
//! through them, with the quota and every fallback; and the worker binary's
//! log after a service sent back a body it could not read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kiroku_pipeline::process::compose::{DocLang, Document, Item, Meta, Paragraph, Photo};
use kiroku_pipeline::process::rewrite::{RewriteConfig, RewriteError, Rewriter};
use kiroku_pipeline::remote::{ApiKey, RemoteConfig};
use kiroku_pipeline::speech::openai::{OpenAiSpeech, OpenAiSpeechConfig};
use kiroku_pipeline::speech::{LanguageHint, SpeechEngine, SpeechError, TranscribeOptions};
use kiroku_pipeline::styling::{StyleEngine, Styler};
use kiroku_tests::pipeline::{leftovers, open_all, run_pipeline, stopped_recording, webm_of};
use kiroku_tests::standin::{Answers, ChatMode, Endpoint, LEAK_MARKER, Reply, StandIn, flat_png};
use kiroku_tests::{Service, TestApp, free_port, worker_with};
use uuid::Uuid;

const KEY: &str = "sk-test-7f3a9c-standin";
const BLUE: [u8; 3] = [20, 40, 220];

fn answers() -> Answers {
    Answers {
        segments: vec![
            (0.0, 2.5, "Buenas noches, elija una carta.".into()),
            (2.5, 6.0, "Sé que es el siete de picas.".into()),
        ],
        chat: ChatMode::Faithful("ANA".into()),
        image_png: flat_png(BLUE, 64, 48),
    }
}

fn quick(attempts: u32, timeout_secs: u64) -> RemoteConfig {
    RemoteConfig {
        timeout: Duration::from_secs(timeout_secs),
        attempts,
        backoff: Duration::from_millis(10),
    }
}

fn speech(
    standin: &StandIn,
    key: &str,
    timestamps: bool,
    remote: RemoteConfig,
) -> Arc<OpenAiSpeech> {
    let config = OpenAiSpeechConfig {
        base_url: standin.openai_url(),
        api_key: ApiKey::new(key.into()),
        model: "whisper-1".into(),
        timestamps,
    };
    Arc::new(OpenAiSpeech::new(config, remote).unwrap())
}

/// Runs the engine as the pipeline does: on a blocking thread.
async fn transcribe(
    engine: &Arc<OpenAiSpeech>,
    seconds: usize,
) -> Result<kiroku_pipeline::speech::Transcript, SpeechError> {
    let engine = engine.clone();
    let audio: Vec<f32> = (0..seconds * 16_000)
        .map(|i| (i as f32 * 0.05).sin() * 0.3)
        .collect();
    tokio::task::spawn_blocking(move || {
        engine.transcribe(
            &audio,
            &TranscribeOptions {
                language: LanguageHint::Spanish,
                initial_prompt: None,
            },
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn speech_sends_wav_segments_and_reads_segment_timestamps_after_429_and_500() {
    let standin = StandIn::start(KEY, answers()).await;
    standin.push(
        Endpoint::Transcriptions,
        &[Reply::Status(429), Reply::Status(500)],
    );
    let engine = speech(&standin, KEY, true, quick(3, 5));
    let t = transcribe(&engine, 6).await.unwrap();
    assert_eq!(t.language, "es");
    let lines: Vec<(u64, u64, &str)> = t
        .segments
        .iter()
        .map(|s| (s.start_ms, s.end_ms, s.text.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (0, 2500, "Buenas noches, elija una carta."),
            (2500, 6000, "Sé que es el siete de picas.")
        ]
    );
    let seen = standin.seen(Endpoint::Transcriptions);
    assert_eq!(seen.len(), 3, "two failures, then the answer");
    let fields = &seen[2].fields;
    assert_eq!(fields["model"], "whisper-1");
    assert_eq!(fields["language"], "es");
    assert_eq!(fields["response_format"], "verbose_json");
    assert_eq!(standin.violations(), Vec::<String>::new());

    // A model without timestamps: the answer is one line over the segment.
    let plain = speech(&standin, KEY, false, quick(1, 5));
    let t = transcribe(&plain, 4).await.unwrap();
    assert_eq!(t.segments.len(), 1);
    assert_eq!((t.segments[0].start_ms, t.segments[0].end_ms), (0, 4000));
    assert_eq!(
        t.segments[0].text,
        "Buenas noches, elija una carta. Sé que es el siete de picas."
    );
    assert_eq!(standin.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn speech_failures_are_clear_bounded_and_never_repeat_the_body() {
    let standin = StandIn::start(KEY, answers()).await;

    // Failing for good after the attempts: the status, and no more calls.
    standin.always(Endpoint::Transcriptions, Reply::Status(503));
    let engine = speech(&standin, KEY, true, quick(3, 5));
    let e = transcribe(&engine, 2).await.unwrap_err().to_string();
    assert!(e.contains("the speech service answered HTTP 503"), "{e}");
    assert_eq!(standin.seen(Endpoint::Transcriptions).len(), 3);

    // A wrong key is not retried.
    standin.clear(Endpoint::Transcriptions);
    let wrong = speech(&standin, "sk-wrong", true, quick(3, 5));
    let before = standin.seen(Endpoint::Transcriptions).len();
    let e = transcribe(&wrong, 2).await.unwrap_err().to_string();
    assert!(e.contains("HTTP 401"), "{e}");
    assert_eq!(
        standin.seen(Endpoint::Transcriptions).len(),
        before + 1,
        "a refused key is not retried"
    );

    // A service that never answers: each attempt times out.
    standin.push(Endpoint::Transcriptions, &[Reply::Hang, Reply::Hang]);
    let slow = speech(&standin, KEY, true, quick(2, 1));
    let started = Instant::now();
    let e = transcribe(&slow, 2).await.unwrap_err().to_string();
    assert!(e.contains("did not answer in time"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // A body that is not the documented format: refused at once, and
    // nothing of it in the error.
    standin.push(Endpoint::Transcriptions, &[Reply::Malformed]);
    let before = standin.seen(Endpoint::Transcriptions).len();
    let e = transcribe(&engine, 2).await.unwrap_err().to_string();
    assert!(e.contains("not in its documented format"), "{e}");
    assert!(!e.contains(LEAK_MARKER));
    assert_eq!(standin.seen(Endpoint::Transcriptions).len(), before + 1);

    // Silence is not sent at all.
    let none = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.transcribe(&[], &TranscribeOptions::default()))
            .await
            .unwrap()
    };
    assert!(matches!(none, Err(SpeechError::NoAudio)));
    assert_eq!(standin.violations(), Vec::<String>::new());
}

/// Mean colour of an image.
fn mean_rgb(img: &image::RgbImage) -> [u8; 3] {
    let n = u64::from(img.width()) * u64::from(img.height());
    let mut sum = [0u64; 3];
    for p in img.pixels() {
        for (total, v) in sum.iter_mut().zip(p.0) {
            *total += u64::from(v);
        }
    }
    sum.map(|s| (s / n) as u8)
}

fn is_blue(rgb: [u8; 3]) -> bool {
    rgb[2] > 180 && rgb[0] < 60 && rgb[1] < 80
}

fn photo() -> image::RgbImage {
    image::RgbImage::from_fn(120, 90, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
    })
}

#[tokio::test]
async fn gemini_and_openai_image_engines_speak_their_formats_and_fail_clearly() {
    let standin = StandIn::start(KEY, answers()).await;
    let gemini = Styler::new(
        StyleEngine::Gemini {
            base_url: standin.gemini_url(),
            api_key: ApiKey::new(KEY.into()),
            model: "gemini-2.5-flash-image".into(),
        },
        quick(3, 5),
    )
    .unwrap();
    standin.push(Endpoint::Gemini, &[Reply::Status(429)]);
    let drawn = gemini.draw(photo()).await.unwrap();
    assert!(is_blue(mean_rgb(&drawn)), "the service's drawing is used");
    let seen = standin.seen(Endpoint::Gemini);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].fields["model"], "gemini-2.5-flash-image");
    assert!(seen[1].fields["prompt"].contains("line art"));

    standin.push(Endpoint::Gemini, &[Reply::Malformed]);
    let e = gemini.draw(photo()).await.unwrap_err().to_string();
    assert!(
        e.contains("not in its documented format") && !e.contains(LEAK_MARKER),
        "{e}"
    );

    let openai = Styler::new(
        StyleEngine::OpenAi {
            base_url: standin.openai_url(),
            api_key: ApiKey::new(KEY.into()),
            model: "gpt-image-1".into(),
        },
        quick(3, 5),
    )
    .unwrap();
    standin.push(Endpoint::ImageEdits, &[Reply::Status(500)]);
    let drawn = openai.draw(photo()).await.unwrap();
    assert!(is_blue(mean_rgb(&drawn)));
    let seen = standin.seen(Endpoint::ImageEdits);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].fields["model"], "gpt-image-1");
    assert!(seen[1].fields["prompt"].contains("Do not add, invent or remove anything"));

    standin.always(Endpoint::ImageEdits, Reply::Status(500));
    let e = openai.draw(photo()).await.unwrap_err().to_string();
    assert!(e.contains("image service answered HTTP 500"), "{e}");
    assert_eq!(standin.violations(), Vec::<String>::new());
}

fn small_doc() -> Document {
    let t = |s: &str| Item::Text(s.to_owned());
    Document {
        meta: Meta {
            title: "La carta".into(),
            participant: "Ana".into(),
            date: "2026-12-04".into(),
            duration_ms: 10_000,
            lang: DocLang::Es,
        },
        paragraphs: vec![
            Paragraph {
                items: vec![t("Buenas noches, elija una carta."), Item::Photo(0)],
                inner: false,
            },
            Paragraph {
                items: vec![t("Sé que es el siete de picas.")],
                inner: true,
            },
        ],
        photos: vec![Photo {
            offset_ms: 1000,
            jpeg: vec![],
            width: 1,
            height: 1,
        }],
    }
}

#[tokio::test]
async fn the_chat_rewrite_keeps_placeholders_or_is_refused() {
    let standin = StandIn::start(KEY, answers()).await;
    let rewriter = Rewriter::new(
        RewriteConfig {
            base_url: standin.openai_url(),
            api_key: ApiKey::new(KEY.into()),
            model: "gpt-4o-mini".into(),
        },
        quick(3, 5),
    )
    .unwrap();
    standin.push(Endpoint::Chat, &[Reply::Status(429)]);
    let paragraphs = rewriter.rewrite(&small_doc()).await.unwrap();
    let shape: Vec<(String, bool)> = paragraphs
        .iter()
        .map(|p| match &p.items[0] {
            Item::Text(t) => (t.clone(), p.inner),
            Item::Photo(i) => (format!("photo {i}"), p.inner),
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("ANA: Buenas noches, elija una carta.".into(), false),
            ("photo 0".into(), false),
            ("ANA: Sé que es el siete de picas.".into(), true),
        ]
    );
    let seen = standin.seen(Endpoint::Chat);
    let body = seen.last().unwrap().json.clone().unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(
        body["messages"][1]["content"],
        "Buenas noches, elija una carta.\n[[FOTO 1]]\n[VIDA INTERNA]\nSé que es el siete de picas.\n[/VIDA INTERNA]"
    );

    standin.set_chat(ChatMode::LosePlaceholder("ANA".into()));
    assert!(matches!(
        rewriter.rewrite(&small_doc()).await,
        Err(RewriteError::Refused(_))
    ));
    standin.set_chat(ChatMode::Truncated);
    assert!(matches!(
        rewriter.rewrite(&small_doc()).await,
        Err(RewriteError::Refused("it was cut off"))
    ));
    standin.push(Endpoint::Chat, &[Reply::Malformed]);
    assert!(matches!(
        rewriter.rewrite(&small_doc()).await,
        Err(RewriteError::Remote(_))
    ));
    standin.always(Endpoint::Chat, Reply::Status(502));
    let e = rewriter
        .rewrite(&small_doc())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("script model answered HTTP 502"), "{e}");
    assert_eq!(standin.violations(), Vec::<String>::new());
}

/// Settings that route every engine to the stand-in.
fn remote_settings(standin: &StandIn, quota: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("KIROKU_SPEECH_ENGINE", "openai".into()),
        ("KIROKU_OPENAI_BASE_URL", standin.openai_url()),
        ("KIROKU_OPENAI_API_KEY", KEY.into()),
        ("KIROKU_STYLE_ENGINE", "gemini".into()),
        ("KIROKU_GEMINI_BASE_URL", standin.gemini_url()),
        ("KIROKU_GEMINI_API_KEY", KEY.into()),
        ("KIROKU_STYLE_DAILY_QUOTA", quota.into()),
        ("KIROKU_REWRITE", "openai".into()),
        ("KIROKU_REMOTE_ATTEMPTS", "3".into()),
        ("KIROKU_REMOTE_BACKOFF_MS", "10".into()),
        ("KIROKU_REMOTE_TIMEOUT_SECS", "10".into()),
    ]
}

/// The photos of a Markdown script, decoded.
fn md_photos(md: &str) -> Vec<image::RgbImage> {
    md.split("data:image/jpeg;base64,")
        .skip(1)
        .map(|rest| {
            let b64 = &rest[..rest.find(')').unwrap()];
            image::load_from_memory(&STANDARD.decode(b64).unwrap())
                .unwrap()
                .to_rgb8()
        })
        .collect()
}

async fn stylized(app: &TestApp, project: Uuid) {
    sqlx::query("UPDATE projects SET stylize = true WHERE id = $1")
        .bind(project)
        .execute(&app.owner_pool().await)
        .await
        .unwrap();
}

#[tokio::test]
async fn with_keys_configured_the_script_is_made_through_the_services_and_falls_back_safely() {
    let app = TestApp::start(&[]).await;
    let standin = StandIn::start(KEY, answers()).await;
    let audio = webm_of("routine-es.wav");

    // 1. Everything works: remote transcription, drawings, rewrite.
    let (_, ana, pair) = app.ready_browser("ana").await;
    let project = stopped_recording(
        &app,
        &ana,
        &audio,
        &[("coffee.jpg", 3_000), ("rocket.jpg", 30_000)],
    )
    .await;
    stylized(&app, project).await;
    let settings = remote_settings(&standin, "10");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker = worker_with(&app, None, &pairs).await;
    standin.push(Endpoint::Transcriptions, &[Reply::Status(429)]);
    run_pipeline(&worker, project).await;

    let (status, notices): (String, Vec<String>) =
        sqlx::query_as("SELECT status, notices FROM projects WHERE id = $1")
            .bind(project)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), notices), ("ready", vec![]));
    let files = open_all(&app, project, &pair.private_pkcs8).await;
    let md = String::from_utf8(files.iter().find(|(k, _)| k == "md").unwrap().1.clone()).unwrap();
    assert!(md.contains("ANA: Buenas noches, elija una carta."), "{md}");
    let photos = md_photos(&md);
    assert_eq!(photos.len(), 2);
    assert!(
        photos.iter().all(|p| is_blue(mean_rgb(p))),
        "the drawings are in the script"
    );
    let segments = standin.seen(Endpoint::Transcriptions).len();
    assert!(
        segments >= 3,
        "one request per segment, plus the retried one"
    );
    assert_eq!(standin.seen(Endpoint::Gemini).len(), 2);
    assert_eq!(standin.seen(Endpoint::Chat).len(), 1);
    assert_eq!(leftovers(&ana, project).await, Vec::<String>::new());

    // 2. Quota of one, the image service down, a rewrite that loses a
    // photo: the script is still made, with the photos as taken, the plain
    // transcript, and notices saying so on the project page.
    let (mut ben_browser, ben, pair) = app.ready_browser("ben").await;
    let project = stopped_recording(
        &app,
        &ben,
        &audio,
        &[("coffee.jpg", 3_000), ("rocket.jpg", 30_000)],
    )
    .await;
    stylized(&app, project).await;
    let settings = remote_settings(&standin, "1");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker = worker_with(&app, None, &pairs).await;
    standin.always(Endpoint::Gemini, Reply::Status(500));
    standin.set_chat(ChatMode::LosePlaceholder("ANA".into()));
    run_pipeline(&worker, project).await;

    let (status, mut notices): (String, Vec<String>) =
        sqlx::query_as("SELECT status, notices FROM projects WHERE id = $1")
            .bind(project)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    notices.sort();
    assert_eq!(status, "ready");
    assert_eq!(
        notices,
        vec!["rewrite:refused", "unstyled:failed:1", "unstyled:quota:1"]
    );
    let files = open_all(&app, project, &pair.private_pkcs8).await;
    let md = String::from_utf8(files.iter().find(|(k, _)| k == "md").unwrap().1.clone()).unwrap();
    assert!(!md.contains("ANA:"), "the refused rewrite is not used");
    assert!(md.contains("Buenas noches"), "{md}");
    let photos = md_photos(&md);
    assert_eq!(photos.len(), 2, "no photo is lost");
    assert!(
        photos.iter().all(|p| !is_blue(mean_rgb(p))),
        "the photos are as taken"
    );
    let page = ben_browser
        .page(&format!("/projects/{project}/progress"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Fotos sin estilizar: 1. Se alcanzó el límite diario"),
        "{page}"
    );
    assert!(page.contains("El servicio de estilizado falló"), "{page}");
    assert!(page.contains("no era fiel a la grabación"), "{page}");
    assert_eq!(standin.violations(), Vec::<String>::new());
    app.stop().await;
}

#[tokio::test]
async fn the_worker_never_logs_a_service_body_or_key() {
    let app = TestApp::start(&[]).await;
    let standin = StandIn::start(KEY, answers()).await;
    standin.always(Endpoint::Transcriptions, Reply::Malformed);
    let (_, user, _) = app.ready_browser("ana").await;
    let project = stopped_recording(&app, &user, &webm_of("routine-es.wav"), &[]).await;
    let queue = kiroku_app::redis_pool(&app.config.queue_redis_url)
        .await
        .unwrap();
    let job = kiroku_jobs::Job {
        kind: kiroku_jobs::JobKind::Prepare,
        project_id: project,
    };
    kiroku_jobs::enqueue_to(
        &queue,
        &kiroku_jobs::stream_for(&app.config.redis_prefix),
        &job,
    )
    .await
    .unwrap();

    let log = std::env::temp_dir().join(format!("kiroku-worker-{}.log", Uuid::new_v4()));
    let mut settings = remote_settings(&standin, "10");
    settings.extend([
        ("KIROKU_STORAGE", "s3".into()),
        ("KIROKU_WORKER_DATABASE_URL", app.db.worker_url.clone()),
        ("KIROKU_REDIS_PREFIX", app.config.redis_prefix.clone()),
        ("KIROKU_WORKER_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("KIROKU_QUEUE_MAX_ATTEMPTS", "1".into()),
        ("KIROKU_LOG", "debug".into()),
    ]);
    let worker = Service::start_logged("kiroku-worker", &settings, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let failure = loop {
        let (status, failure): (String, Option<String>) =
            sqlx::query_as("SELECT status, failure FROM projects WHERE id = $1")
                .bind(project)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if status == "failed" {
            break failure.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "the project never failed ({status})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    worker.stop();
    assert!(
        failure.contains("the speech service sent an answer that is not in its documented format"),
        "{failure}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).ok();
    assert!(
        logged.contains("not in its documented format"),
        "the failure was logged"
    );
    assert!(
        !logged.contains(LEAK_MARKER),
        "a service body reached the log"
    );
    assert!(!logged.contains(KEY), "the API key reached the log");
    assert!(!failure.contains(LEAK_MARKER));
    assert_eq!(standin.violations(), Vec::<String>::new());
    app.stop().await;
}
