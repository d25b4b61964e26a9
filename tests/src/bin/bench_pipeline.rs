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
//! 3. stop → ready with the offline engine (local Whisper)
//!    (`--skip-engine` leaves this out; it takes minutes).
//!
//! 1 and 3 run as production does: the *prepare* job is put on the queue
//! and the worker's own consumer (one slot per job kind, the default) takes
//! it from there, so segments are transcribed while the rest is still being
//! cut, and queue latency is included. The clock runs from the enqueue to
//! the project's `ready`, which the benchmark polls every 5 ms. Exits
//! non-zero on a crash or a project that does not end ready with four
//! artifacts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Parser;
use kiroku_pipeline::WorkerState;
use kiroku_pipeline::process::{self, compose};
use kiroku_pipeline::queue::Queue;
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
    /// From the enqueue until the last segment was cut and stored.
    prepare: Duration,
    /// From then until every segment was transcribed.
    transcribe: Duration,
    /// From then until the artifacts were sealed and the project ready.
    finalize: Duration,
    segments: i64,
    /// From the enqueue until the project was `ready` (its cleanup still
    /// going on).
    ready: Duration,
}

impl Times {
    fn total(&self) -> Duration {
        self.prepare + self.transcribe + self.finalize
    }
}

/// Queues the project's *prepare* job for the running consumer and follows
/// the project to `ready`, noting when each step ended; then checks the
/// outcome.
async fn run_jobs(worker: &WorkerState, user_id: &str, project: Uuid) -> anyhow::Result<Times> {
    let started = Instant::now();
    kiroku_jobs::enqueue_to(
        &worker.queue,
        &worker.jobs_stream,
        &kiroku_jobs::Job {
            kind: kiroku_jobs::JobKind::Prepare,
            project_id: project,
        },
    )
    .await?;
    let (mut cut, mut transcribed, mut most_segments) = (None, None, 0);
    let deadline = Duration::from_secs(3600);
    loop {
        let (status, step, failure, segments): (String, Option<String>, Option<String>, i64) =
            sqlx::query_as(
                "SELECT status, step, failure,
                        (SELECT count(*) FROM segments s WHERE s.project_id = p.id)
                   FROM projects p WHERE id = $1",
            )
            .bind(project)
            .fetch_one(&worker.db)
            .await?;
        let now = started.elapsed();
        // The rows go with the cleanup: the most seen is the count.
        most_segments = most_segments.max(segments);
        ensure!(status != "failed", "the project failed: {failure:?}");
        match step.as_deref() {
            Some("transcribe") => {
                cut.get_or_insert(now);
            }
            Some("finalize") => {
                cut.get_or_insert(now);
                transcribed.get_or_insert(now);
            }
            _ => {}
        }
        if status == "ready" {
            // The performer sees the script now; the finalize job goes on
            // to delete the recording, and the clock stops only when that
            // is done too.
            while !leftovers(user_id, project).await.is_empty() {
                ensure!(started.elapsed() < deadline, "the cleanup did not end");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let clean = started.elapsed();
            let cut = cut.unwrap_or(now);
            let transcribed = transcribed.unwrap_or(now);
            let t = Times {
                prepare: cut,
                transcribe: transcribed - cut,
                finalize: clean - transcribed,
                segments: most_segments,
                ready: now,
            };
            check_outcome(worker, project).await?;
            return Ok(t);
        }
        ensure!(now < deadline, "the project did not finish within an hour");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The project ended ready, with four artifacts.
async fn check_outcome(worker: &WorkerState, project: Uuid) -> anyhow::Result<()> {
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
    Ok(())
}

/// Starts the worker's job consumer, as `kiroku-worker` runs it.
async fn consumer(worker: &WorkerState) -> anyhow::Result<Consumer> {
    let queue = Queue::new(
        &worker.queue,
        worker.config.queue.clone(),
        kiroku_pipeline::handlers(worker.clone()),
    )
    .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(queue.run(async move {
        let _ = stopped.await;
    }));
    Ok(Consumer { stop, task })
}

/// A running consumer. Only one runs at a time: two on the same stream
/// would share the jobs.
struct Consumer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Consumer {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
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
    let jobs = consumer(&worker).await?;
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let project =
            stopped_recording_of(&app, &user_id, &audio, chunks, duration_ms, &photos).await;
        let t = run_jobs(&worker, &user_id, project).await?;
        eprintln!(
            "run {}/{}: cut at {} s, {} segments transcribed {} s later, \
             finalize {} s more, total {} s (ready at {} s)",
            i + 1,
            args.runs,
            secs(t.prepare),
            t.segments,
            secs(t.transcribe),
            secs(t.finalize),
            secs(t.total()),
            secs(t.ready)
        );
        runs.push(t);
    }
    jobs.stop().await;
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
        let jobs = consumer(&worker).await?;
        let project =
            stopped_recording_of(&app, &user_id, &audio, chunks, duration_ms, &photos).await;
        let t = run_jobs(&worker, &user_id, project).await?;
        jobs.stop().await;
        eprintln!(
            "with the engine: cut at {} s, {} segments transcribed {} s later, finalize {} s more",
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
        "excluding the speech engine: {} s to the end of the cleanup, ready at {} s \
         (cut at {} s, the last of {} segments transcribed {} s later, finalize {} s more)",
        secs(mid.total()),
        secs(mid.ready),
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
            "stop → ready with the offline engine: {} s \
             ({} segments; cut at {} s, the last transcribed {} s later)",
            secs(t.total()),
            t.segments,
            secs(t.prepare),
            secs(t.transcribe)
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
            "ready_s": mid.ready.as_secs_f64(),
            "cut_s": mid.prepare.as_secs_f64(),
            "transcribed_after_cut_s": mid.transcribe.as_secs_f64(),
            "finalize_s": mid.finalize.as_secs_f64(),
            "pdf_s": pdf.as_secs_f64(),
            "with_engine_s": engine_run.map(|t| t.total().as_secs_f64()),
        })
    );
    worker.db.close().await;
    app.stop().await;
    Ok(())
}
