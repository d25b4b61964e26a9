//! The insider drill as a command, for the browser story to run right
//! after its recording (see [`kiroku_tests::drill`]).
//!
//! It reads the app's own configuration from the `KIROKU_*` variables the
//! app ran with. Given: `--logs FILE` (what the app printed), `--sentences
//! FILE` (one routine sentence per line), `--username NAME`; the
//! performer's password in `KIROKU_DRILL_PASSWORD` and further strings that
//! must never be logged, one per line, in `KIROKU_DRILL_SECRETS` (kept out
//! of the command line, which other processes can read). Exits non-zero
//! with the reason when anything leaks or opens.

use anyhow::Context;
use clap::Parser;
use kiroku_app::config::AppConfig;
use kiroku_runtime::Env;
use kiroku_tests::drill::{self, Drill};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    logs: std::path::PathBuf,
    #[arg(long)]
    sentences: std::path::PathBuf,
    #[arg(long)]
    username: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    kiroku_runtime::init_tracing(&kiroku_runtime::Env::from_process());
    let config = AppConfig::from_env(&Env::from_process()).context("the app's configuration")?;
    let password = std::env::var("KIROKU_DRILL_PASSWORD").context("KIROKU_DRILL_PASSWORD")?;
    let mut secrets: Vec<String> = std::env::var("KIROKU_DRILL_SECRETS")
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    secrets.push(password.clone());
    let sentences = std::fs::read_to_string(&args.sentences)
        .context("reading the sentences")?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let app_logs = std::fs::read_to_string(&args.logs).context("reading the app's logs")?;
    let found = drill::run(
        &config,
        &Drill {
            app_logs,
            sentences,
            secrets,
            username: args.username,
            password,
        },
    )
    .await?;
    println!(
        "insider drill passed: {} tables ({} rows), {} Redis keys, {} artifacts fetched \
         with minted tokens, {} key candidates, {} bytes of app logs; nothing leaked or opened",
        found.tables,
        found.rows,
        found.redis_keys,
        found.artifacts,
        found.candidates,
        found.log_bytes
    );
    Ok(())
}
