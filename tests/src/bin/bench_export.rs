//! Export throughput benchmark (`just bench-export`).
//!
//! One object (1 GiB by default) is stored under `final/v1/` with the
//! worker key; then the same client, `curl`, downloads it alternately
//!
//! - through the export service (release build, started here on S3 with
//!   the configured key ring), with a freshly minted token, and
//! - straight from the same SeaweedFS with the worker key (SigV4 signed
//!   by curl itself),
//!
//! into `/dev/null`, several times each. The headline is the ratio of the
//! median rates (goal ≥ 0.9). curl on both sides keeps the client's cost
//! identical, so the difference is the export service's own. The export
//! service's peak resident memory is sampled during its downloads.
//!
//! It exits non-zero only on a crash or a wrong download (size or
//! SHA-256); missing the goal is a result. The object is deleted at the
//! end.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use kiroku_crypto::token::{Claims, KeyRing};
use kiroku_storage::Role;
use kiroku_tests::{env, free_port, s3_store, wait_ready};
use rsa::sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(about = "Export service throughput vs a direct SeaweedFS GET")]
struct Args {
    /// Object size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Timed downloads per path (after one warm-up each).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The export binary to measure (built by `just bench-export`).
    #[arg(long)]
    export_bin: Option<PathBuf>,
}

struct Download {
    secs: f64,
    bytes: u64,
    sha256: String,
}

/// One `curl` download. Timed runs write to /dev/null, so the client does
/// nothing but receive; with `verify` the body goes to a temporary file
/// that is hashed afterwards, outside the timing.
fn curl(args: &[String], verify: bool) -> anyhow::Result<Download> {
    let out = std::env::temp_dir().join(format!("kiroku-bench-export-{}", std::process::id()));
    let target = if verify {
        out.to_string_lossy().into_owned()
    } else {
        "/dev/null".into()
    };
    let started = Instant::now();
    let output = Command::new("curl")
        .args(["-sS", "--fail", "-o", &target, "-w", "%{size_download}"])
        .args(args)
        .output()
        .context("running curl")?;
    let secs = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let bytes: u64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
    let sha256 = if verify {
        let mut f = std::fs::File::open(&out)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::fs::remove_file(&out).ok();
        hex(&h.finalize())
    } else {
        String::new()
    };
    Ok(Download {
        secs,
        bytes,
        sha256,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let env = env();
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let export_bin = args
        .export_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(&target).join("release/kiroku-export"));
    ensure!(
        export_bin.exists(),
        "{} is missing: run `just bench-export`, which builds it",
        export_bin.display()
    );
    let get = |k: &str| {
        env.get(k)
            .map(str::to_owned)
            .with_context(|| format!("{k} is not set: run through `just bench-export`"))
    };
    let endpoint = get("KIROKU_S3_ENDPOINT")?;
    let region = get("KIROKU_S3_REGION").unwrap_or_else(|_| "us-east-1".into());
    let bucket = get("KIROKU_S3_BUCKET")?;
    let access = get("KIROKU_WORKER_S3_ACCESS_KEY_ID")?;
    let secret = get("KIROKU_WORKER_S3_SECRET_ACCESS_KEY")?;
    let ring = KeyRing::parse(&get("KIROKU_EXPORT_KEYS")?).context("KIROKU_EXPORT_KEYS")?;
    let kid = get("KIROKU_EXPORT_SIGNING_KID")?;

    // The object: a pseudo-random pattern of prime length, so that a
    // dropped or repeated stretch changes the hash.
    let size = args.size_mib * 1024 * 1024;
    let mut x: u32 = 0x2545_f491;
    let pattern: Vec<u8> = (0..65_521)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut data = Vec::with_capacity(size as usize);
    while (data.len() as u64) < size {
        let n = pattern.len().min(size as usize - data.len());
        data.extend_from_slice(&pattern[..n]);
    }
    let want = hex(&Sha256::digest(&data));
    let key = format!(
        "final/v1/{}/{}/{}",
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4()
    );
    let store = s3_store(&env, Role::Worker);
    store
        .put(&key, Bytes::from(data))
        .await
        .context("storing the object")?;
    eprintln!("stored {} MiB at {key}", args.size_mib);

    let result = measure(
        &args,
        &export_bin,
        &key,
        size,
        &want,
        (&endpoint, &region, &bucket, &access, &secret),
        (&ring, &kid),
    )
    .await;
    if let Err(e) = store.delete(&key).await {
        eprintln!("could not delete {key}: {e}");
    }
    result
}

async fn measure(
    args: &Args,
    export_bin: &PathBuf,
    key: &str,
    size: u64,
    want: &str,
    (endpoint, region, bucket, access, secret): (&str, &str, &str, &str, &str),
    (ring, kid): (&KeyRing, &str),
) -> anyhow::Result<()> {
    let port = free_port();
    let mut child = Command::new(export_bin)
        .env("KIROKU_STORAGE", "s3")
        .env("KIROKU_EXPORT_LISTEN", format!("127.0.0.1:{port}"))
        .env("KIROKU_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the export service")?;
    let base = format!("http://127.0.0.1:{port}");
    let ready = wait_ready(&format!("{base}/readyz"), 30).await;
    let outcome = async {
        ready.map_err(|e| anyhow::anyhow!("export service not ready: {e}"))?;
        let pid = child.id();
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let idle = peak.load(Ordering::Relaxed);
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };

        let export_args = || -> anyhow::Result<Vec<String>> {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs() as i64;
            let claims = Claims {
                path: key.to_owned(),
                project_id: uuid::Uuid::new_v4().to_string(),
                artifact_id: uuid::Uuid::new_v4().to_string(),
                content_type: "application/pdf".into(),
                filename: "bench.pdf".into(),
                iat: now,
                exp: now + 120, // within the export service's default 300 s maximum
            };
            let token = ring.sign(kid, &claims)?;
            Ok(vec![
                "-H".into(),
                format!("authorization: Bearer {token}"),
                format!("{base}/objects/{key}"),
            ])
        };
        let direct_args = vec![
            "--aws-sigv4".into(),
            format!("aws:amz:{region}:s3"),
            "--user".into(),
            format!("{access}:{secret}"),
            format!("{}/{bucket}/{key}", endpoint.trim_end_matches('/')),
        ];

        // Warm-up, verified: both paths give exactly the stored bytes.
        for (name, a) in [("export", export_args()?), ("direct", direct_args.clone())] {
            let d = curl(&a, true)?;
            ensure!(
                d.bytes == size && d.sha256 == want,
                "{name}: got {} bytes with SHA-256 {}, want {size} bytes with {want}",
                d.bytes,
                d.sha256
            );
            eprintln!(
                "warm-up {name}: {:.0} MiB/s, bytes verified",
                size as f64 / 1048576.0 / d.secs
            );
        }
        let (mut export, mut direct) = (Vec::new(), Vec::new());
        for i in 0..args.runs {
            // Alternate which goes first, so neither always meets a warmer
            // cache.
            let order = if i % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for through_export in order {
                let a = if through_export {
                    export_args()?
                } else {
                    direct_args.clone()
                };
                let d = curl(&a, false)?;
                ensure!(d.bytes == size, "short download: {} bytes", d.bytes);
                let rate = size as f64 / 1048576.0 / d.secs;
                if through_export {
                    export.push(rate);
                } else {
                    direct.push(rate);
                }
            }
            eprintln!(
                "run {}/{}: export {:.0} MiB/s, direct {:.0} MiB/s",
                i + 1,
                args.runs,
                export[i],
                direct[i]
            );
        }
        sampling.store(false, Ordering::Relaxed);
        sampler.join().ok();
        let (me, md) = (median(&export), median(&direct));
        let ratio = me / md;
        println!(
            "Export of a {} MiB object, {} runs per path after a verified warm-up (curl to /dev/null)",
            args.size_mib, args.runs
        );
        println!("path     median MiB/s   min    max");
        for (name, v) in [("export", &export), ("direct", &direct)] {
            println!(
                "{name:<8} {:>12.0} {:>6.0} {:>6.0}",
                median(v),
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max)
            );
        }
        let peak_kib = peak.load(Ordering::Relaxed);
        println!(
            "export service RSS: idle {:.1} MiB, peak {:.1} MiB",
            idle as f64 / 1024.0,
            peak_kib as f64 / 1024.0
        );
        println!(
            "ratio export/direct: {ratio:.2} (goal ≥ 0.9: {})",
            if ratio >= 0.9 { "met" } else { "NOT met" }
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "export",
                "size_mib": args.size_mib,
                "runs": args.runs,
                "export_mib_s": export,
                "direct_mib_s": direct,
                "ratio": ratio,
                "goal_met": ratio >= 0.9,
                "rss_idle_kib": idle,
                "rss_peak_kib": peak_kib,
            })
        );
        anyhow::Ok(())
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    outcome
}
