//! Recording load benchmark (`just bench-recording`).
//!
//! Simulated recorders speak the real protocol against the real app (served
//! in-process, as the integration tests do, on its own runtime), PostgreSQL,
//! Redis and SeaweedFS on loopback: `POST /api/project/start`, a WebSocket
//! on `/ws/audio` carrying `seq (u32 BE) || audio` frames answered
//! `{"ack": seq}` once stored, then `POST /api/project/stop`, which must
//! report nothing missing.
//!
//! Three measurements:
//! 1. the raw PUT rate of the same SeaweedFS with the worker key, objects
//!    of the chunk size, `--concurrency` in flight;
//! 2. the app's maximum chunk throughput at the same concurrency
//!    (recorders sending back-to-back, each waiting for its ack); 1 and 2
//!    run in `--rounds` alternating pairs and the ratio is their median;
//! 3. a ramp of concurrent recordings, each sending a chunk every
//!    `--interval-ms` without waiting for acks, as the island does (by
//!    default time is compressed: the real recorder sends one chunk per
//!    10 s), stopping at the first step that loses a chunk or whose p99
//!    acknowledgement latency exceeds `--p99-ms`.
//!
//! A simulated recorder does not reconnect: a chunk the server fails to
//! store (it closes the socket with 1011) counts as lost, although the
//! island would resend it. Each phase reports where the CPU went (this
//! process's app and recorder threads, SeaweedFS, PostgreSQL, Redis,
//! everything else) and each ramp step runs probes beside the recorders (a
//! PostgreSQL commit, a chunk-sized PUT, a timer) to show where stalls come
//! from.
//!
//! It exits non-zero only on a crash or a broken promise (an acknowledged
//! chunk that is not stored); missing the goal is a result, not a failure.
//! Every object it creates is deleted and the test database dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use kiroku_storage::{Role, Store};
use kiroku_tests::{Browser, TestApp, env, s3_store};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Seconds of audio the real recorder puts in one chunk.
const REAL_CHUNK_SECONDS: u64 = 10;

#[derive(Parser, Debug, Clone)]
#[command(about = "Recording load benchmark against the real app and SeaweedFS")]
struct Args {
    /// Concurrent recordings for each ramp step.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "25,50,100,250,500,1000,1500"
    )]
    steps: Vec<usize>,
    /// Chunks each recorder sends per ramp step.
    #[arg(long, default_value_t = 10)]
    chunks: u32,
    /// Chunk size in KiB (MediaRecorder: about 16 KB/s, so ~160 KiB per 10 s).
    #[arg(long, default_value_t = 160)]
    chunk_kib: usize,
    /// Milliseconds between a recorder's chunks (the real recorder: 10000).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// A step passes when no chunk is lost and p99 ack latency is at most this.
    #[arg(long, default_value_t = 100)]
    p99_ms: u64,
    /// How long a recorder waits for outstanding acks after its last send.
    #[arg(long, default_value_t = 30)]
    ack_timeout_secs: u64,
    /// Requests in flight for the raw PUT and maximum-throughput runs.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds of the raw PUT and maximum-throughput runs.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Unmeasured warm-up seconds before those runs.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Rounds of raw PUT and app runs, alternating which goes first; the
    /// ratio reported is the median of the rounds' (SeaweedFS's own rate
    /// moves by a third between runs a minute apart).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Projects started and sockets opened at once while setting up a step.
    #[arg(long, default_value_t = 32)]
    setup_parallel: usize,
    /// Pause after each run and cleanup, so SeaweedFS settles, seconds.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// The app's log filter (`KIROKU_LOG` syntax), to stderr.
    #[arg(long, default_value = "warn")]
    log: String,
    /// Run every ramp step even after one fails.
    #[arg(long)]
    keep_going: bool,
    /// Skip the raw PUT and maximum-throughput runs.
    #[arg(long)]
    skip_throughput: bool,
    /// Skip the ramp.
    #[arg(long)]
    skip_ramp: bool,
}

/// What the whole benchmark shares.
struct Ctx {
    args: Args,
    browser: Browser,
    user_id: String,
    audio: Bytes,
    /// The worker's store, for the probes.
    worker: Store,
    /// The app's database, for the probes.
    db_url: String,
}

impl Ctx {
    fn chunk_bytes(&self) -> usize {
        self.audio.len()
    }
}

fn frame(seq: u32, audio: &[u8]) -> Message {
    let mut v = Vec::with_capacity(4 + audio.len());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(audio);
    Message::Binary(v.into())
}

/// Incompressible bytes, like Opus audio.
fn pseudo_audio(len: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

async fn start_project(ctx: &Ctx, title: &str) -> anyhow::Result<String> {
    let b = &ctx.browser;
    let resp = b
        .http
        .post(format!("{}/api/project/start", b.base))
        .header("x-csrf-token", &b.csrf)
        .json(&json!({
            "title": title,
            "participant": "Bench",
            "language": "es",
            "audio_type": "audio/webm;codecs=opus",
        }))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    if status != 200 {
        bail!("start: {status} {body}");
    }
    body["project_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("start: no project_id in {body}"))
}

async fn connect(ctx: &Ctx, project: &str) -> anyhow::Result<Socket> {
    let b = &ctx.browser;
    let url = format!(
        "{}/ws/audio?project={project}",
        b.base.replace("http://", "ws://")
    );
    let mut req = url.into_client_request()?;
    let cookie = format!("kiroku_session={}", b.session_cookie().unwrap_or_default());
    req.headers_mut().insert("cookie", cookie.parse()?);
    req.headers_mut().insert("origin", b.base.parse()?);
    // Browsers send with TCP_NODELAY.
    let (socket, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .context("websocket")?;
    Ok(socket)
}

/// Stops the project; `Ok(missing)` lists what the server says is missing.
async fn stop_project(ctx: &Ctx, project: &str, last_seq: u32) -> anyhow::Result<Vec<u32>> {
    let b = &ctx.browser;
    let resp = b
        .http
        .post(format!("{}/api/project/stop", b.base))
        .header("x-csrf-token", &b.csrf)
        .json(&json!({
            "project_id": project,
            "last_seq": last_seq,
            "duration_ms": (u64::from(last_seq) + 1) * REAL_CHUNK_SECONDS * 1000,
        }))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    match status.as_u16() {
        200 if body["state"] == "queued" => Ok(Vec::new()),
        409 if body["missing"].is_array() => Ok(body["missing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64().map(|n| n as u32))
            .collect()),
        _ => bail!("stop: {status} {body}"),
    }
}

/// One recorder's result.
#[derive(Default)]
struct Outcome {
    sent: u32,
    acked: u32,
    latencies: Vec<Duration>,
    /// Acks slower than the p99 limit: sequence number and send time.
    slow: Vec<(u32, Instant)>,
    last_ack: Option<Instant>,
    /// Acks that arrived inside the measured window (back-to-back runs).
    window_acks: u64,
    /// Chunks the stop answer called missing.
    stop_missing: usize,
    /// Of those, chunks that had been acknowledged: a broken promise.
    acked_missing: usize,
    errors: Vec<String>,
}

/// When a ramp step's recorders stop: all together once every one has its
/// acks, a few at a time, so that a burst of stops (which real recorders,
/// ending at random times, never make) does not slow the last chunks.
struct StopGate {
    all_done: tokio::sync::Barrier,
    parallel: tokio::sync::Semaphore,
}

/// A recorder with an open socket, sending `chunks` chunks, the first at
/// `first` and then one every `interval`, without waiting for acks (as
/// the island does), then stopping the project.
async fn paced_recorder(
    ctx: Arc<Ctx>,
    project: String,
    socket: Socket,
    first: Instant,
    interval: Duration,
    chunks: u32,
    gate: Arc<StopGate>,
) -> Outcome {
    let (mut sink, mut stream) = socket.split();
    let sent_at: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; chunks as usize]));
    let sender = {
        let sent_at = sent_at.clone();
        let audio = ctx.audio.clone();
        tokio::spawn(async move {
            for seq in 0..chunks {
                tokio::time::sleep_until((first + interval * seq).into()).await;
                sent_at.lock().unwrap()[seq as usize] = Some(Instant::now());
                if let Err(e) = sink.send(frame(seq, &audio)).await {
                    return (sink, seq, Some(format!("send: {e}")));
                }
            }
            (sink, chunks, None)
        })
    };
    let mut out = Outcome::default();
    let mut acked = vec![false; chunks as usize];
    let deadline = first
        + interval * chunks.saturating_sub(1)
        + Duration::from_secs(ctx.args.ack_timeout_secs);
    while out.acked < chunks {
        let msg = match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Err(_) => {
                out.errors.push("ack timeout".into());
                break;
            }
            Ok(None) => {
                out.errors.push("socket closed".into());
                break;
            }
            Ok(Some(Err(e))) => {
                out.errors.push(format!("socket: {e}"));
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let now = Instant::now();
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                match v["ack"].as_u64() {
                    Some(seq) if (seq as usize) < acked.len() && !acked[seq as usize] => {
                        acked[seq as usize] = true;
                        out.acked += 1;
                        out.last_ack = Some(now);
                        if let Some(at) = sent_at.lock().unwrap()[seq as usize] {
                            out.latencies.push(now - at);
                            if now - at > Duration::from_millis(ctx.args.p99_ms) {
                                out.slow.push((seq as u32, at));
                            }
                        }
                    }
                    Some(_) => {}
                    None => out.errors.push(format!("server said {t}")),
                }
            }
            Message::Close(f) => {
                out.errors.push(format!("closed by server: {f:?}"));
                break;
            }
            _ => {}
        }
    }
    let sink = match sender.await {
        Ok((sink, sent, err)) => {
            out.sent = sent;
            out.errors.extend(err);
            Some(sink)
        }
        Err(e) => {
            out.errors.push(format!("sender task: {e}"));
            None
        }
    };
    // Every recorder reaches the gate, whatever happened to it.
    gate.all_done.wait().await;
    let _permit = gate.parallel.acquire().await;
    match stop_project(&ctx, &project, chunks - 1).await {
        Ok(missing) => {
            out.stop_missing = missing.len();
            out.acked_missing = missing
                .iter()
                .filter(|s| acked.get(**s as usize) == Some(&true))
                .count();
        }
        Err(e) => out.errors.push(e.to_string()),
    }
    if let Some(mut sink) = sink {
        let _ = sink.close().await;
    }
    out
}

/// A recorder sending back-to-back: each chunk as soon as the previous one
/// is acknowledged, until `until`.
async fn eager_recorder(
    ctx: Arc<Ctx>,
    project: String,
    mut socket: Socket,
    measure_from: Instant,
    until: Instant,
) -> Outcome {
    // The server refuses sequence numbers beyond the longest recording.
    const MAX_CHUNKS: u32 = 1000;
    let mut out = Outcome::default();
    'send: while Instant::now() < until && out.sent < MAX_CHUNKS {
        let seq = out.sent;
        let at = Instant::now();
        if let Err(e) = socket.send(frame(seq, &ctx.audio)).await {
            out.errors.push(format!("send: {e}"));
            break;
        }
        out.sent += 1;
        loop {
            let msg = tokio::time::timeout(
                Duration::from_secs(ctx.args.ack_timeout_secs),
                socket.next(),
            )
            .await;
            match msg {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["ack"].as_u64() == Some(u64::from(seq)) {
                        let now = Instant::now();
                        out.acked += 1;
                        out.last_ack = Some(now);
                        out.latencies.push(now - at);
                        if now >= measure_from && now <= until {
                            out.window_acks += 1;
                        }
                        break;
                    }
                    out.errors.push(format!("server said {t}"));
                    break 'send;
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    out.errors.push(format!("closed by server: {f:?}"));
                    break 'send;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    out.errors.push(format!("socket: {e}"));
                    break 'send;
                }
                Ok(None) => {
                    out.errors.push("socket closed".into());
                    break 'send;
                }
                Err(_) => {
                    out.errors.push("ack timeout".into());
                    break 'send;
                }
            }
        }
    }
    if out.sent > 0 {
        match stop_project(&ctx, &project, out.sent - 1).await {
            Ok(missing) => {
                out.stop_missing = missing.len();
                // Acks come in order: 0..acked were acknowledged.
                out.acked_missing = missing.iter().filter(|s| **s < out.acked).count();
            }
            Err(e) => out.errors.push(e.to_string()),
        }
    }
    let _ = socket.close(None).await;
    out
}

/// Starts `n` projects and opens their sockets, `setup_parallel` at a time.
async fn open_recorders(
    ctx: &Arc<Ctx>,
    n: usize,
    label: &str,
) -> (Vec<(String, Socket)>, Vec<String>) {
    let results: Vec<anyhow::Result<(String, Socket)>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let ctx = ctx.clone();
            let title = format!("{label} {i}");
            async move {
                let project = start_project(&ctx, &title).await?;
                let socket = connect(&ctx, &project).await?;
                Ok((project, socket))
            }
        })
        .buffer_unordered(ctx.args.setup_parallel)
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(p) => ok.push(p),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    (ok, failed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One ramp step's numbers.
struct StepReport {
    n: usize,
    setup_failed: usize,
    sent: u64,
    acked: u64,
    lost: u64,
    stop_missing: u64,
    acked_missing: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    chunks_per_s: f64,
    mb_per_s: f64,
    errors: Vec<String>,
    /// Where the CPU went while it ran.
    cpu: String,
    /// What the probes saw meanwhile.
    probes: String,
}

impl StepReport {
    fn passes(&self, p99_limit: Duration) -> bool {
        self.setup_failed == 0 && self.lost == 0 && self.stop_missing == 0 && self.p99 <= p99_limit
    }
}

async fn ramp_step(ctx: &Arc<Ctx>, n: usize) -> StepReport {
    let a = &ctx.args;
    let setup = Instant::now();
    let (recorders, setup_errors) = open_recorders(ctx, n, &format!("Ramp {n}")).await;
    eprintln!(
        "  step {n}: {} recorders ready in {:.1} s",
        recorders.len(),
        setup.elapsed().as_secs_f64()
    );
    let interval = Duration::from_millis(a.interval_ms);
    let t0 = Instant::now() + Duration::from_millis(200);
    let cpu_before = cpu_snapshot();
    let probes = Probes::start(ctx);
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_millis(200);
    eprintln!(
        "  step {n}: sending from {:.1} s since the epoch",
        epoch.as_secs_f64()
    );
    let count = recorders.len().max(1) as u32;
    let gate = Arc::new(StopGate {
        all_done: tokio::sync::Barrier::new(recorders.len() + 1),
        parallel: tokio::sync::Semaphore::new(a.setup_parallel),
    });
    let tasks: Vec<_> = recorders
        .into_iter()
        .enumerate()
        .map(|(i, (project, socket))| {
            // Phases spread evenly over one interval, as independent
            // recorders would be.
            let first = t0 + interval * i as u32 / count;
            tokio::spawn(paced_recorder(
                ctx.clone(),
                project,
                socket,
                first,
                interval,
                a.chunks,
                gate.clone(),
            ))
        })
        .collect();
    // Every recorder has sent everything and has its acks (or gave up).
    gate.all_done.wait().await;
    let cpu = cpu_line(&cpu_before, &cpu_snapshot());
    let probes = probes.finish(t0).await;
    let mut outcomes = Vec::with_capacity(n);
    for t in tasks {
        match t.await {
            Ok(o) => outcomes.push(o),
            Err(e) => outcomes.push(Outcome {
                errors: vec![format!("recorder task: {e}")],
                ..Outcome::default()
            }),
        }
    }
    let mut report = summarise(
        ctx,
        n,
        t0,
        setup_errors,
        outcomes,
        u64::from(a.chunks) * n as u64,
    );
    report.cpu = cpu;
    report.probes = probes;
    report
}

/// Small requests timed beside a ramp step, to tell where stalls come
/// from: a PostgreSQL commit (WAL flush) every 100 ms, a chunk-sized PUT
/// to SeaweedFS with the worker key every 250 ms (extra load: 4 chunks/s),
/// and how late a 100 ms timer fires on the recorders' runtime.
struct Probes {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(&'static str, Samples)>>,
}

/// When each probe started and how long it took.
type Samples = Vec<(Instant, Duration)>;

const PROBE_EVERY: Duration = Duration::from_millis(100);

impl Probes {
    fn start(ctx: &Arc<Ctx>) -> Probes {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        {
            let stop = stop.clone();
            let url = ctx.db_url.clone();
            tasks.push(tokio::spawn(async move {
                use sqlx::Connection;
                let mut out = Vec::new();
                let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
                    return ("PostgreSQL commit", out);
                };
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    // Assigning a transaction id makes the commit flush WAL.
                    if sqlx::query("SELECT txid_current()")
                        .execute(&mut conn)
                        .await
                        .is_ok()
                    {
                        out.push((at, at.elapsed()));
                    }
                    tokio::time::sleep_until((at + PROBE_EVERY).into()).await;
                }
                conn.close().await.ok();
                ("PostgreSQL commit", out)
            }));
        }
        {
            let stop = stop.clone();
            let store = ctx.worker.clone();
            let prefix = format!("ingest/{}/probe", ctx.user_id);
            let audio = ctx.audio.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let body = audio;
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    if store
                        .put(&format!("{prefix}/{i:06}"), body.clone())
                        .await
                        .is_ok()
                    {
                        out.push((at, at.elapsed()));
                    }
                    i += 1;
                    tokio::time::sleep_until((at + PROBE_EVERY * 5 / 2).into()).await;
                }
                ("SeaweedFS chunk PUT", out)
            }));
        }
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    tokio::time::sleep(PROBE_EVERY).await;
                    out.push((at, at.elapsed().saturating_sub(PROBE_EVERY)));
                }
                ("timer lateness", out)
            }));
        }
        Probes { stop, tasks }
    }

    /// Stops the probes; one line per probe with p50/p99/max and the
    /// seconds (since `t0`) in which it took more than 100 ms.
    async fn finish(self, t0: Instant) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut lines = Vec::new();
        for t in self.tasks {
            let Ok((name, samples)) = t.await else {
                continue;
            };
            let mut lat: Vec<Duration> = samples.iter().map(|(_, d)| *d).collect();
            lat.sort_unstable();
            let mut slow: std::collections::BTreeMap<u64, u64> = Default::default();
            for (at, d) in &samples {
                if *d > Duration::from_millis(100) {
                    let e = slow
                        .entry(at.saturating_duration_since(t0).as_secs())
                        .or_default();
                    *e = (*e).max(d.as_millis() as u64);
                }
            }
            lines.push(format!(
                "{name} p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                ms(lat.last().copied().unwrap_or_default()),
                if slow.is_empty() {
                    String::new()
                } else {
                    format!(" (over 100 ms in second: ms {slow:?})")
                }
            ));
        }
        lines.join("; ")
    }
}

/// Where the CPU goes between `from` and `until`.
async fn cpu_window(from: Instant, until: Instant) -> String {
    tokio::time::sleep_until(from.into()).await;
    let a = cpu_snapshot();
    tokio::time::sleep_until(until.into()).await;
    cpu_line(&a, &cpu_snapshot())
}

fn summarise(
    ctx: &Ctx,
    n: usize,
    t0: Instant,
    setup_errors: Vec<String>,
    outcomes: Vec<Outcome>,
    expected: u64,
) -> StepReport {
    let mut lat: Vec<Duration> = outcomes
        .iter()
        .flat_map(|o| o.latencies.iter().copied())
        .collect();
    lat.sort_unstable();
    let sent: u64 = outcomes.iter().map(|o| u64::from(o.sent)).sum();
    let acked: u64 = outcomes.iter().map(|o| u64::from(o.acked)).sum();
    let last = outcomes.iter().filter_map(|o| o.last_ack).max();
    let secs = last.map(|l| (l - t0).as_secs_f64()).unwrap_or(0.0);
    let chunks_per_s = if secs > 0.0 { acked as f64 / secs } else { 0.0 };
    let mut by_seq: std::collections::BTreeMap<u32, usize> = Default::default();
    let mut by_second: std::collections::BTreeMap<u64, usize> = Default::default();
    for (seq, at) in outcomes.iter().flat_map(|o| o.slow.iter()) {
        *by_seq.entry(*seq).or_default() += 1;
        *by_second
            .entry(at.saturating_duration_since(t0).as_secs())
            .or_default() += 1;
    }
    if !by_seq.is_empty() {
        eprintln!(
            "    {} acks slower than {} ms; by chunk number {by_seq:?}; by second of sending {by_second:?}",
            by_seq.values().sum::<usize>(),
            ctx.args.p99_ms
        );
    }
    let mut errors: Vec<String> = setup_errors.clone();
    errors.extend(outcomes.iter().flat_map(|o| o.errors.iter().cloned()));
    StepReport {
        n,
        setup_failed: setup_errors.len(),
        sent,
        acked,
        lost: expected.saturating_sub(acked),
        stop_missing: outcomes.iter().map(|o| o.stop_missing as u64).sum(),
        acked_missing: outcomes.iter().map(|o| o.acked_missing as u64).sum(),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
        chunks_per_s,
        mb_per_s: chunks_per_s * ctx.chunk_bytes() as f64 / 1e6,
        errors,
        cpu: String::new(),
        probes: String::new(),
    }
}

/// What the raw PUT run measured.
struct RawPut {
    per_s: f64,
    latencies: Vec<Duration>,
    failed: u64,
    cpu: String,
}

/// Raw PUTs of chunk-sized objects with the worker key: objects per second
/// completed in the measured window, and their latencies.
async fn raw_put_rate(ctx: &Arc<Ctx>, store: &Store) -> RawPut {
    let a = &ctx.args;
    let begin = Instant::now();
    let measure_from = begin + Duration::from_secs(a.warmup_secs);
    let until = measure_from + Duration::from_secs(a.secs);
    let cpu = tokio::spawn(cpu_window(measure_from, until));
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|w| {
            let store = store.clone();
            let audio = ctx.audio.clone();
            let prefix = format!("ingest/{}/raw-put/{w}", ctx.user_id);
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut failed = 0u64;
                let mut i = 0u64;
                while Instant::now() < until {
                    let at = Instant::now();
                    match store.put(&format!("{prefix}/{i:06}"), audio.clone()).await {
                        Ok(()) => done.push((at, Instant::now())),
                        Err(e) => {
                            failed += 1;
                            eprintln!("  raw PUT failed: {e}");
                        }
                    }
                    i += 1;
                }
                (done, failed)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut counted = 0u64;
    let mut failed = 0u64;
    for t in tasks {
        let (done, f) = t.await.expect("PUT task");
        failed += f;
        for (at, end) in done {
            if end >= measure_from && end <= until {
                counted += 1;
                lat.push(end - at);
            }
        }
    }
    lat.sort_unstable();
    RawPut {
        per_s: counted as f64 / a.secs as f64,
        latencies: lat,
        failed,
        cpu: cpu.await.unwrap_or_default(),
    }
}

/// The app's chunk throughput with `concurrency` recorders sending
/// back-to-back.
async fn app_max_rate(ctx: &Arc<Ctx>) -> (f64, StepReport) {
    let a = &ctx.args;
    let (recorders, setup_errors) = open_recorders(ctx, a.concurrency, "Max").await;
    let begin = Instant::now();
    let measure_from = begin + Duration::from_secs(a.warmup_secs);
    let until = measure_from + Duration::from_secs(a.secs);
    let cpu = tokio::spawn(cpu_window(measure_from, until));
    let tasks: Vec<_> = recorders
        .into_iter()
        .map(|(project, socket)| {
            tokio::spawn(eager_recorder(
                ctx.clone(),
                project,
                socket,
                measure_from,
                until,
            ))
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("recorder task"));
    }
    let expected: u64 = outcomes.iter().map(|o| u64::from(o.sent)).sum();
    let in_window: u64 = outcomes.iter().map(|o| o.window_acks).sum();
    let mut report = summarise(ctx, a.concurrency, begin, setup_errors, outcomes, expected);
    report.cpu = cpu.await.unwrap_or_default();
    (in_window as f64 / a.secs as f64, report)
}

/// Deletes every object under `prefix`, `parallel` at a time.
async fn delete_prefix(store: &Store, prefix: &str, parallel: usize) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let keys = store.list(prefix).await?;
        if keys.is_empty() {
            return Ok(total);
        }
        total += keys.len();
        futures_util::stream::iter(keys)
            .map(|k| async move { store.delete(&k).await })
            .buffer_unordered(parallel)
            .try_collect::<Vec<()>>()
            .await?;
    }
}

/// CPU time (in clock ticks of 1/100 s) used since boot, split by who used it.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    at: Instant,
    /// All CPUs: busy and idle (idle includes iowait).
    busy: u64,
    idle: u64,
    /// This process's app-server threads.
    app: u64,
    /// This process's other threads (the simulated recorders and their
    /// S3 client for the raw PUT run).
    client: u64,
    weed: u64,
    postgres: u64,
    redis: u64,
}

/// utime + stime of a `/proc/.../stat` line, and its command name.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn cpu_snapshot() -> CpuSnapshot {
    let mut snap = CpuSnapshot {
        at: Instant::now(),
        busy: 0,
        idle: 0,
        app: 0,
        client: 0,
        weed: 0,
        postgres: 0,
        redis: 0,
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = stat.lines().next()
    {
        // user nice system idle iowait irq softirq steal (guest is in user).
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 8 {
            snap.idle = v[3] + v[4];
            snap.busy = v.iter().sum::<u64>() - snap.idle;
        }
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            if let Some((comm, ticks)) = stat_ticks(&stat) {
                if comm.starts_with(SERVER_THREADS) {
                    snap.app += ticks;
                } else {
                    snap.client += ticks;
                }
            }
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            if !p
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
                continue;
            };
            match stat_ticks(&stat) {
                Some((comm, t)) if comm == "weed" => snap.weed += t,
                Some((comm, t)) if comm == "postgres" => snap.postgres += t,
                Some((comm, t)) if comm == "redis-server" => snap.redis += t,
                _ => {}
            }
        }
    }
    snap
}

/// Average cores used between two snapshots, by whom.
fn cpu_line(a: &CpuSnapshot, b: &CpuSnapshot) -> String {
    let secs = (b.at - a.at).as_secs_f64().max(0.001);
    let cores = |x: u64, y: u64| y.saturating_sub(x) as f64 / 100.0 / secs;
    let busy = cores(a.busy, b.busy);
    let known = cores(a.app, b.app)
        + cores(a.client, b.client)
        + cores(a.weed, b.weed)
        + cores(a.postgres, b.postgres)
        + cores(a.redis, b.redis);
    format!(
        "app {:.2}, recorders {:.2}, SeaweedFS {:.2}, PostgreSQL {:.2}, Redis {:.2}, \
         other processes {:.2}, idle {:.2}",
        cores(a.app, b.app),
        cores(a.client, b.client),
        cores(a.weed, b.weed),
        cores(a.postgres, b.postgres),
        cores(a.redis, b.redis),
        (busy - known).max(0.0),
        cores(a.idle, b.idle),
    )
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn print_step(s: &StepReport) {
    println!(
        "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
        s.n,
        s.sent,
        s.acked,
        s.lost + s.setup_failed as u64,
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        s.chunks_per_s,
        s.mb_per_s
    );
}

fn show_errors(errors: &[String]) {
    if errors.is_empty() {
        return;
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in errors {
        *counts.entry(e.as_str()).or_default() += 1;
    }
    for (e, n) in counts.iter().take(10) {
        eprintln!("    {n} × {e}");
    }
}

/// Name prefix of the threads serving the app, so that their CPU time can
/// be told apart from the simulated recorders'.
const SERVER_THREADS: &str = "app-server";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.chunks == 0 || args.steps.is_empty() || args.concurrency == 0 || args.secs == 0 {
        bail!("--chunks, --steps, --concurrency and --secs must be positive");
    }
    let environment = env();
    kiroku_runtime::init_tracing(&kiroku_runtime::Env::from_pairs([(
        "KIROKU_LOG",
        args.log.as_str(),
    )]));
    let biggest = args
        .steps
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(args.concurrency);
    if let Some(limit) = open_files_limit() {
        // Client and server end of each socket, plus S3 connections.
        let need = biggest as u64 * 3 + 500;
        eprintln!("open files limit {limit} (about {need} needed)");
        if limit < need {
            eprintln!("warning: raise it with `ulimit -n {need}`");
        }
    }
    // The app and the recorders each get their own runtime (and threads),
    // as they would be separate machines; they still share the cores.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("recorders")
        .enable_all()
        .build()?;

    let app = server.block_on(TestApp::start(&[
        ("KIROKU_MAX_CONCURRENT_RECORDINGS", "1000000"),
        ("KIROKU_WS_IDLE_SECS", "600"),
        ("KIROKU_LOG", "warn"),
    ]));
    let result = client.block_on(async {
        let (browser, user_id, _) = app.ready_browser("bench").await;
        let worker = s3_store(&environment, Role::Worker);
        let ctx = Arc::new(Ctx {
            audio: pseudo_audio(args.chunk_kib * 1024),
            args: args.clone(),
            browser,
            user_id,
            worker: worker.clone(),
            db_url: app.db.app_url.clone(),
        });
        let prefix = format!("ingest/{}/", ctx.user_id);
        let result = run(&ctx, &worker, &prefix).await;

        eprintln!("cleaning up");
        match delete_prefix(&worker, &prefix, 64).await {
            Ok(n) => eprintln!("deleted {n} objects under {prefix}"),
            Err(e) => eprintln!("warning: cleanup of {prefix} failed: {e}"),
        }
        if let Ok(queue) = kiroku_app::redis_pool(app.config.queue_redis_url.as_str()).await {
            use fred::interfaces::KeysInterface;
            let stream = kiroku_jobs::stream_for(&app.config.redis_prefix);
            let _: Result<i64, _> = queue.del(stream.as_str()).await;
        }
        result
    });
    server.block_on(app.stop());
    result
}

async fn run(ctx: &Arc<Ctx>, worker: &Store, prefix: &str) -> anyhow::Result<()> {
    let a = &ctx.args;
    let chunk = ctx.chunk_bytes();
    println!("# Recording load benchmark");
    println!(
        "chunk {} KiB, {} ms between a recorder's chunks (the real recorder: {} s, so time is \
         compressed {:.0}×), {} chunks per recorder per step, pass = no lost chunk and \
         p99 ack ≤ {} ms; {} cores; {} build",
        a.chunk_kib,
        a.interval_ms,
        REAL_CHUNK_SECONDS,
        (REAL_CHUNK_SECONDS * 1000) as f64 / a.interval_ms as f64,
        a.chunks,
        a.p99_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    let settle = Duration::from_secs(a.settle_secs);
    // Broken promises: an acknowledged chunk that is not stored.
    let mut wrong: Vec<String> = Vec::new();

    if !a.skip_throughput {
        println!();
        println!("## Throughput at {} in flight", a.concurrency);
        println!(
            "| round | what | objects/s | MB/s | p50 ms | p99 ms | failed | CPU, average cores used |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let mut ratios = Vec::new();
        for round in 1..=a.rounds.max(1) {
            // Alternate the order, so that neither run always meets a
            // SeaweedFS still busy with the other's aftermath.
            let mut raw = None;
            let mut app = None;
            for app_turn in [round % 2 == 0, round % 2 == 1] {
                if app_turn {
                    eprintln!(
                        "round {round}: app back-to-back, {} recorders, {} s warm-up + {} s",
                        a.concurrency, a.warmup_secs, a.secs
                    );
                    let (rate, max) = app_max_rate(ctx).await;
                    show_errors(&max.errors);
                    check_stored(worker, prefix, &max, &mut wrong).await?;
                    app = Some((rate, max));
                } else {
                    eprintln!(
                        "round {round}: raw PUT, {} in flight, {} s warm-up + {} s",
                        a.concurrency, a.warmup_secs, a.secs
                    );
                    raw = Some(raw_put_rate(ctx, worker).await);
                }
                delete_prefix(worker, prefix, 64).await?;
                tokio::time::sleep(settle).await;
            }
            let (raw, (app_rate, max)) = (raw.expect("ran"), app.expect("ran"));
            println!(
                "| {round} | raw PUT, worker key | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
                raw.per_s,
                raw.per_s * chunk as f64 / 1e6,
                ms(percentile(&raw.latencies, 0.5)),
                ms(percentile(&raw.latencies, 0.99)),
                raw.failed,
                raw.cpu
            );
            println!(
                "| {round} | app chunks, back-to-back | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
                app_rate,
                app_rate * chunk as f64 / 1e6,
                ms(max.p50),
                ms(max.p99),
                max.lost + max.stop_missing + max.setup_failed as u64,
                max.cpu
            );
            if raw.per_s > 0.0 {
                ratios.push(app_rate / raw.per_s);
            }
        }
        ratios.sort_by(f64::total_cmp);
        println!();
        println!(
            "achieved / raw PUT = {:.2} (median of {} rounds; each: {})",
            ratios.get(ratios.len() / 2).copied().unwrap_or(0.0),
            ratios.len(),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    if !a.skip_ramp {
        println!();
        println!("## Ramp");
        println!(
            "| recordings | chunks sent | acked | lost | p50 ms | p99 ms | max ms | chunks/s | MB/s |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let limit = Duration::from_millis(a.p99_ms);
        let mut best: Option<usize> = None;
        let mut cpu = Vec::new();
        let mut probes = Vec::new();
        for &n in &a.steps {
            eprintln!("ramp step: {n} recordings");
            let step = ramp_step(ctx, n).await;
            print_step(&step);
            show_errors(&step.errors);
            if step.stop_missing > 0 {
                eprintln!("    stop reported {} missing chunks", step.stop_missing);
            }
            cpu.push(format!("- {n} recordings: {}", step.cpu));
            probes.push(format!("- {n} recordings: {}", step.probes));
            check_stored(worker, prefix, &step, &mut wrong).await?;
            delete_prefix(worker, prefix, 64).await?;
            tokio::time::sleep(settle).await;
            if step.passes(limit) {
                best = Some(best.map_or(n, |b: usize| b.max(n)));
            } else if !a.keep_going {
                eprintln!("  step {n} failed; stopping the ramp");
                break;
            }
        }
        println!();
        println!("CPU, average cores used:");
        for line in cpu {
            println!("{line}");
        }
        println!();
        println!(
            "Probes during each step (commit and timer every 100 ms, chunk PUT every 250 ms):"
        );
        for line in probes {
            println!("{line}");
        }
        println!();
        match best {
            Some(n) => println!(
                "largest passing step: {n} concurrent recordings ({:.0} chunks/s offered, \
                 the load of {} real-time recorders at one chunk per {} s)",
                n as f64 * 1000.0 / a.interval_ms as f64,
                n as u64 * REAL_CHUNK_SECONDS * 1000 / a.interval_ms,
                REAL_CHUNK_SECONDS
            ),
            None => println!("largest passing step: none"),
        }
    }
    if !wrong.is_empty() {
        bail!("acknowledged chunks were not stored: {}", wrong.join("; "));
    }
    Ok(())
}

/// Every acknowledged chunk must be in the store and known to `stop`.
async fn check_stored(
    worker: &Store,
    prefix: &str,
    step: &StepReport,
    wrong: &mut Vec<String>,
) -> anyhow::Result<()> {
    let stored = worker.list(prefix).await?.len() as u64;
    if stored < step.acked {
        wrong.push(format!(
            "{} recordings: {} chunks acknowledged but {stored} objects stored",
            step.n, step.acked
        ));
    }
    if step.acked_missing > 0 {
        wrong.push(format!(
            "{} recordings: stop called {} acknowledged chunks missing",
            step.n, step.acked_missing
        ));
    }
    Ok(())
}
