//! `kiroku-export`: the read-only export service.

use std::process::ExitCode;

use kiroku_export::ExportConfig;
use kiroku_runtime::Env;

#[tokio::main]
async fn main() -> ExitCode {
    let env = Env::from_process();
    kiroku_runtime::init_tracing(&env);
    env.warn_unknown();
    let result = match ExportConfig::from_env(&env) {
        Ok(config) => kiroku_export::serve(config).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
