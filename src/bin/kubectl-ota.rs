//! `kubectl-ota`: the kubectl plugin for ota-operator Rollouts (`kubectl ota get rollout NAME`,
//! `promote`, `pause`, `abort`, `retry`, `status`). Installed on the PATH, kubectl finds it.
#![forbid(unsafe_code)]

use clap::Parser;
use ota_operator::cli::kubectl::{self, KubectlOta};

fn main() -> std::process::ExitCode {
    let options = KubectlOta::parse();
    ota_operator::telemetry::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kubectl-ota: cannot start: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(kubectl::run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kubectl-ota: {}", ota_operator::telemetry::error_chain(&error));
            std::process::ExitCode::from(error.exit_code())
        }
    }
}
