//! Local transcription speed (`just bench-speech`): Kiroku's engine
//! (whisper-rs, in process) against whisper.cpp's own command-line tool
//! linked with the same compiled library (`scripts/build-whisper-cli.sh`),
//! on the same fixture, model, language, beam search (5) and threads
//! (every core unless `KIROKU_WHISPER_THREADS` says otherwise).
//!
//! Speed is audio seconds per wall second. The engine is timed around
//! `transcribe` with the model already loaded, as the worker holds it; the
//! CLI loads the model on every run, so its time is the total it reports
//! minus its own load time (both figures are printed). Runs alternate,
//! after one warm-up each; the medians give the ratio (goal ≥ 0.95). Exits
//! non-zero only on a crash or an empty transcript.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use kiroku_pipeline::speech::local::{LocalConfig, LocalEngine};
use kiroku_pipeline::speech::{LanguageHint, SpeechEngine, TranscribeOptions};
use kiroku_tests::{env, fixture};

#[derive(Parser, Debug)]
#[command(about = "Local Whisper speed: Kiroku's engine vs whisper.cpp's CLI")]
struct Args {
    /// The whisper-cli built by scripts/build-whisper-cli.sh.
    #[arg(long)]
    cli: std::path::PathBuf,
    /// A fixture recording (tests/fixtures/…).
    #[arg(long, default_value = "routine-es.wav")]
    wav: String,
    /// es or en.
    #[arg(long, default_value = "es")]
    language: String,
    /// Timed runs of each (median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// 16 kHz mono: f32 samples for the engine, and a 16-bit WAV for the CLI.
fn decode(path: &std::path::Path, wav_out: &std::path::Path) -> anyhow::Result<Vec<f32>> {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(path)
        .args(["-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le"])
        .arg(wav_out)
        .status()
        .context("ffmpeg")?;
    ensure!(
        status.success(),
        "ffmpeg could not decode {}",
        path.display()
    );
    let bytes = std::fs::read(wav_out)?;
    // A canonical 44-byte header precedes the samples ffmpeg writes.
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .context("no data chunk")?
        + 8;
    Ok(bytes[data..]
        .chunks_exact(2)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
        .collect())
}

/// One CLI run: (transcription ms = total − load, load ms).
fn cli_run(
    args: &Args,
    model: &str,
    threads: usize,
    wav: &std::path::Path,
) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(&args.cli)
        .args(["-m", model, "-f"])
        .arg(wav)
        .args([
            "-l",
            &args.language,
            "-t",
            &threads.to_string(),
            "-bs",
            "5",
            "-bo",
            "5",
            // No -np: it also silences the timings read below.
        ])
        .output()
        .context("whisper-cli")?;
    ensure!(out.status.success(), "whisper-cli failed");
    ensure!(!out.stdout.is_empty(), "whisper-cli transcribed nothing");
    let log = String::from_utf8_lossy(&out.stderr);
    let timing = |name: &str| -> anyhow::Result<f64> {
        let line = log
            .lines()
            .find(|l| l.contains("whisper_print_timings") && l.contains(name))
            .with_context(|| format!("no {name} in whisper-cli's timings"))?;
        let value = line.split('=').nth(1).context("timing format")?;
        Ok(value
            .split_whitespace()
            .next()
            .context("timing value")?
            .parse()?)
    };
    let total = timing("total time")?;
    let load = timing("load time")?;
    Ok((total - load, load))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = LocalConfig::from_env(&env())?;
    let model = config.model.display().to_string();
    let threads = config.threads;
    let language: LanguageHint = args.language.parse().map_err(anyhow::Error::msg)?;
    if language == LanguageHint::Auto {
        bail!("give es or en: the CLI and the engine must not each detect on their own");
    }
    let wav = std::env::temp_dir().join(format!("kiroku-bench-speech-{}.wav", std::process::id()));
    let samples = decode(&fixture(&args.wav), &wav)?;
    let audio_secs = samples.len() as f64 / 16_000.0;
    let engine = LocalEngine::load(config)?;
    let options = TranscribeOptions {
        language,
        initial_prompt: None,
    };
    println!(
        "{} ({audio_secs:.1} s), model {model}, {threads} threads, beam 5; {} runs each after a warm-up",
        args.wav, args.runs
    );

    let mut ours = Vec::new();
    let mut cli = Vec::new();
    let mut loads = Vec::new();
    for run in 0..=args.runs {
        let started = Instant::now();
        let t = engine.transcribe(&samples, &options)?;
        let engine_ms = started.elapsed().as_secs_f64() * 1000.0;
        ensure!(!t.segments.is_empty(), "the engine transcribed nothing");
        let (cli_ms, load_ms) = cli_run(&args, &model, threads, &wav)?;
        if run == 0 {
            println!(
                "warm-up: engine {engine_ms:.0} ms, CLI {cli_ms:.0} ms (+{load_ms:.0} ms load)"
            );
            continue;
        }
        println!(
            "run {run}: engine {:.2}× real time ({engine_ms:.0} ms), CLI {:.2}× ({cli_ms:.0} ms + {load_ms:.0} ms load)",
            audio_secs * 1000.0 / engine_ms,
            audio_secs * 1000.0 / cli_ms
        );
        ours.push(audio_secs * 1000.0 / engine_ms);
        cli.push(audio_secs * 1000.0 / cli_ms);
        loads.push(load_ms);
    }
    std::fs::remove_file(&wav).ok();
    let (ours, cli) = (median(ours), median(cli));
    println!(
        "median speed: engine {ours:.2}× real time, whisper-cli {cli:.2}× (load {:.0} ms not counted); engine / CLI = {:.2} (goal ≥ 0.95)",
        median(loads),
        ours / cli
    );
    Ok(())
}
