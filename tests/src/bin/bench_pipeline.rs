//! Pipeline benchmark (`just bench-pipeline`): a 10-minute recording with
//! 10 photos, from *stop* to four sealed artifacts, on the real
//! PostgreSQL, Redis and SeaweedFS.
//!
//! Three figures:
//! 1. the pipeline excluding the speech engine: the same jobs (assemble
//!    and decode the chunks, cut segments, store them, record transcripts,
//!    prepare the photos, render Markdown, HTML, DOCX and PDF, seal and
//!    store four artifacts, clean up) with a transcriber that answers at
//!    once with the routine's sentences;
//! 2. the PDF render on its own, for the same document;
//! 3. stop → ready with the offline engine (local Whisper), segments
//!    transcribed one after another as a one-slot worker would
//!    (`--skip-engine` leaves this out; it takes minutes).
//!
//! The jobs are called directly, one at a time, as the queue would run
//! them on one worker; queue latency is not included. Exits non-zero on a
//! crash or a project that does not end ready with four artifacts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use kiroku_pipeline::WorkerState;
use kiroku_pipeline::process::{self, compose};
use kiroku_tests::pipeline::{leftovers, looped_webm, stopped_recording_of};
use kiroku_tests::{Scripted, TestApp, env, fixture, worker_for};
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(about = "Pipeline benchmark: 10 minutes of audio and 10 photos to sealed artifacts")]
struct Args {
    /// Minutes of audio (the Spanish routine, looped).
    #[arg(long, default_value_t = 10)]
    minutes: u32,
    /// Photos, spread evenly over the recording.
    #[arg(long, default_value_t = 10)]
    photos: usize,
    /// Runs of the engine-free pipeline and of the PDF render (median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Leave out the run with the offline speech engine.
    #[arg(long)]
    skip_engine: bool,
}

const PHOTOS: [&str; 4] = ["astronaut.jpg", "rocket.jpg", "coffee.jpg", "chelsea.jpg"];

fn routine() -> Vec<String> {
    std::fs::read_to_string(fixture("routine-es.txt"))
        .expect("routine text")
        .split_inclusive(['.', '?', '!'])
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Default, Debug, Clone, Copy)]
struct Times {
    prepare: Duration,
    transcribe: Duration,
    finalize: Duration,
    segments: i64,
}

impl Times {
    fn total(&self) -> Duration {
        self.prepare + self.transcribe + self.finalize
    }
}

/// Runs prepare → transcribe (every segment) → finalize and checks the
/// outcome.
async fn run_jobs(worker: &WorkerState, user_id: &str, project: Uuid) -> anyhow::Result<Times> {
    let mut t = Times::default();
    let started = Instant::now();
    process::prepare(worker, project).await.context("prepare")?;
    t.prepare = started.elapsed();
    t.segments = sqlx::query_scalar("SELECT count(*) FROM segments WHERE project_id = $1")
        .bind(project)
        .fetch_one(&worker.db)
        .await?;
    let started = Instant::now();
    for _ in 0..t.segments {
        process::transcribe(worker, project)
            .await
            .context("transcribe")?;
    }
    t.transcribe = started.elapsed();
    let started = Instant::now();
    process::finalize(worker, project)
        .await
        .context("finalize")?;
    t.finalize = started.elapsed();

    let (status, artifacts): (String, i64) = sqlx::query_as(
        "SELECT status, (SELECT count(*) FROM artifacts a WHERE a.project_id = p.id)
           FROM projects p WHERE id = $1",
    )
    .bind(project)
    .fetch_one(&worker.db)
    .await?;
    ensure!(
        status == "ready" && artifacts == 4,
        "project ended {status} with {artifacts} artifacts"
    );
    ensure!(
        leftovers(user_id, project).await.is_empty(),
        "ingest or work objects were left behind"
    );
    Ok(t)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1 && args.minutes >= 1);
    let app = TestApp::start(&[]).await;
    let (_, user_id, _) = app.ready_browser("bench").await;
    let audio = looped_webm("routine-es.wav", args.minutes * 60);
    let duration_ms = i64::from(args.minutes) * 60_000;
    let photos: Vec<(&str, i64)> = (0..args.photos)
        .map(|i| {
            (
                PHOTOS[i % PHOTOS.len()],
                duration_ms * (2 * i as i64 + 1) / (2 * args.photos.max(1) as i64),
            )
        })
        .collect();
    // One chunk per 10 seconds, as the island sends them.
    let chunks = (duration_ms / 10_000) as usize;
    eprintln!(
        "{} min of WebM/Opus ({} bytes in {chunks} chunks), {} photos",
        args.minutes,
        audio.len(),
        photos.len()
    );

    // 1. Excluding the speech engine.
    let instant: process::SharedTranscriber = Arc::new(Scripted(routine()));
    let worker = worker_for(&app, Some(instant)).await;
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let project =
            stopped_recording_of(&app, &user_id, &audio, chunks, duration_ms, &photos).await;
        let t = run_jobs(&worker, &user_id, project).await?;
        eprintln!(
            "run {}/{}: prepare {} s, {} segments {} s, finalize {} s, total {} s",
            i + 1,
            args.runs,
            secs(t.prepare),
            t.segments,
            secs(t.transcribe),
            secs(t.finalize),
            secs(t.total())
        );
        runs.push(t);
    }
    runs.sort_by_key(Times::total);
    let mid = runs[runs.len() / 2];

    // 2. The PDF on its own: the same kind of document, rendered alone.
    let lines: Vec<compose::Line> = {
        let sentences = routine();
        let step = 3_300;
        (0..duration_ms / step)
            .map(|i| compose::Line {
                start_ms: i * step,
                end_ms: i * step + step - 300,
                text: sentences[i as usize % sentences.len()].clone(),
            })
            .collect()
    };
    let mut doc_photos = Vec::new();
    for (name, offset_ms) in &photos {
        let bytes = std::fs::read(fixture(&format!("photos/{name}")))?;
        let p = process::photos::prepare(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        doc_photos.push(compose::Photo {
            offset_ms: *offset_ms,
            jpeg: p.jpeg,
            width: p.width,
            height: p.height,
        });
    }
    let jpegs: Vec<Vec<u8>> = doc_photos.iter().map(|p| p.jpeg.clone()).collect();
    let doc = compose::compose(
        compose::Meta {
            title: "La carta #1".into(),
            participant: "Ana".into(),
            date: "2026-12-03".into(),
            duration_ms,
            lang: compose::DocLang::Es,
        },
        lines,
        doc_photos,
    );
    let mut pdf_times = Vec::new();
    let mut pdf_bytes = 0;
    for _ in 0..args.runs {
        let started = Instant::now();
        let pdf = process::pdf::render(&doc, &jpegs).map_err(|e| anyhow::anyhow!("{e}"))?;
        pdf_times.push(started.elapsed());
        pdf_bytes = pdf.len();
    }
    let pdf = median(pdf_times);

    // 3. Stop → ready with the offline engine.
    let engine_run = if args.skip_engine {
        None
    } else {
        let config = kiroku_pipeline::speech::local::LocalConfig::from_env(&env())?;
        let engine = tokio::task::spawn_blocking(move || {
            kiroku_pipeline::speech::local::LocalEngine::load(config)
        })
        .await??;
        let engine: Arc<dyn kiroku_pipeline::speech::SpeechEngine> = Arc::new(engine);
        let worker = worker_for(
            &app,
            Some(Arc::new(process::engine::EngineTranscriber(engine))),
        )
        .await;
        let project =
            stopped_recording_of(&app, &user_id, &audio, chunks, duration_ms, &photos).await;
        let t = run_jobs(&worker, &user_id, project).await?;
        eprintln!(
            "with the engine: prepare {} s, {} segments {} s, finalize {} s",
            secs(t.prepare),
            t.segments,
            secs(t.transcribe),
            secs(t.finalize)
        );
        worker.db.close().await;
        Some(t)
    };

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "Pipeline, {} min recording ({chunks} chunks), {} photos, {profile} build, median of {} runs",
        args.minutes,
        photos.len(),
        args.runs
    );
    println!(
        "excluding the speech engine: {} s (prepare {} s, {} segments recorded {} s, finalize {} s)",
        secs(mid.total()),
        secs(mid.prepare),
        mid.segments,
        secs(mid.transcribe),
        secs(mid.finalize)
    );
    println!(
        "PDF render alone: {} s ({} KiB)",
        secs(pdf),
        pdf_bytes / 1024
    );
    if let Some(t) = engine_run {
        println!(
            "stop → ready with the offline engine: {} s ({} s of it transcribing {} segments)",
            secs(t.total()),
            secs(t.transcribe),
            t.segments
        );
    }
    println!(
        "goal (≤ 1.6 s excluding the engine): {}",
        if mid.total().as_secs_f64() <= 1.6 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "pipeline",
            "profile": profile,
            "minutes": args.minutes,
            "photos": photos.len(),
            "excluding_engine_s": mid.total().as_secs_f64(),
            "prepare_s": mid.prepare.as_secs_f64(),
            "transcribe_bookkeeping_s": mid.transcribe.as_secs_f64(),
            "finalize_s": mid.finalize.as_secs_f64(),
            "pdf_s": pdf.as_secs_f64(),
            "with_engine_s": engine_run.map(|t| t.total().as_secs_f64()),
        })
    );
    worker.db.close().await;
    app.stop().await;
    Ok(())
}
