//! `kiroku`: the web server and the operator's command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiroku_app::config::AppConfig;
use kiroku_app::doctor::Level;
use kiroku_app::{db, doctor, users};
use kiroku_crypto::token::KeyRing;
use kiroku_runtime::Env;

#[derive(Parser)]
#[command(
    name = "kiroku",
    version,
    about = "Kiroku: rehearsal to script, zero knowledge"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the web server (the default).
    Serve,
    /// Apply database migrations (uses KIROKU_MIGRATE_DATABASE_URL).
    Migrate,
    /// Manage accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check services and that every credential has exactly its permissions.
    Doctor,
    /// Rotate the export token keys (prints new settings; changes nothing).
    ExportKeys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Step 1 of a rotation: a ring with one more, fresh key.
    Add {
        /// The new key id (default: the next free `kN`).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Step 3: the ring without the old key, once no token signed with it
    /// can still be valid.
    Remove { kid: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user and print a one-time temporary password.
    Add { name: String },
    /// List users.
    List,
    /// Disable a user: they can no longer sign in.
    Disable { name: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    kiroku_runtime::init_tracing(&env);
    env.warn_unknown();
    match run(cli, env).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, env: Env) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => kiroku_app::serve(AppConfig::from_env(&env)?).await?,
        Command::Migrate => {
            let url = env.required("KIROKU_MIGRATE_DATABASE_URL")?;
            db::migrate(&url).await.context("migration failed")?;
            println!("migrations applied");
        }
        Command::User { command } => {
            let config = AppConfig::from_env(&env)?;
            let pool = db::connect(&config.database_url)
                .await
                .context("PostgreSQL")?;
            match command {
                UserCommand::Add { name } => {
                    let user = users::add(&pool, &name, config.kdf_default).await?;
                    println!("created user {} ({})", user.username, user.id);
                    println!(
                        "temporary password (shown once): {}",
                        user.temporary_password
                    );
                    println!(
                        "sign in at {}/login to choose a real password",
                        config.public_url
                    );
                }
                UserCommand::List => {
                    for u in users::list(&pool).await? {
                        let state = match (u.disabled, u.key_set_up) {
                            (true, _) => "disabled",
                            (false, true) => "active",
                            (false, false) => "awaiting first sign-in",
                        };
                        println!(
                            "{}\t{}\t{}\t{}",
                            u.username,
                            u.id,
                            state,
                            u.created_at.date()
                        );
                    }
                }
                UserCommand::Disable { name } => {
                    users::disable(&pool, &name)
                        .await
                        .with_context(|| format!("user {name}"))?;
                    println!("user {name} disabled");
                }
            }
        }
        Command::ExportKeys { command } => {
            let mut ring = match env.get("KIROKU_EXPORT_KEYS") {
                Some(spec) => KeyRing::parse(spec).context("KIROKU_EXPORT_KEYS")?,
                None => KeyRing::default(),
            };
            match command {
                KeysCommand::Add { kid } => {
                    let kid = kid.unwrap_or_else(|| {
                        (1..)
                            .map(|n| format!("k{n}"))
                            .find(|k| !ring.contains(k))
                            .expect("a free kid")
                    });
                    let secret = kiroku_crypto::random_array::<32>()?;
                    ring.insert(&kid, secret.to_vec()).context("new key")?;
                    println!("# 1. Give the export service the new ring and restart it:");
                    println!("KIROKU_EXPORT_KEYS={}", ring.to_spec().as_str());
                    println!(
                        "# 2. Then give the app the same ring, sign with the new key, restart it:"
                    );
                    println!("KIROKU_EXPORT_SIGNING_KID={kid}");
                    println!(
                        "# 3. After the token lifetime has passed: kiroku export-keys remove OLD_KID"
                    );
                }
                KeysCommand::Remove { kid } => {
                    anyhow::ensure!(ring.remove(&kid), "{kid} is not in KIROKU_EXPORT_KEYS");
                    anyhow::ensure!(!ring.kids().is_empty(), "the ring would be empty");
                    println!("KIROKU_EXPORT_KEYS={}", ring.to_spec().as_str());
                }
            }
        }
        Command::Doctor => {
            let config = AppConfig::from_env(&env)?;
            let report = doctor::run(&config, &env).await;
            for f in &report.findings {
                let mark = match f.level {
                    Level::Ok => "ok  ",
                    Level::Warning => "warn",
                    Level::Error => "FAIL",
                };
                println!("{mark} {}: {}", f.check, f.message);
            }
            if report.has_errors() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
