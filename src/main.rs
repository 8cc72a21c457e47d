//! The `ota` binary.
#![forbid(unsafe_code)]

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ota_operator::{
    crdgen,
    telemetry::{self, LogFormat},
};

/// ota-operator: live updates for Capacitor apps, declared in Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "ota", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OTA_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, in the RUST_LOG syntax (e.g. `info`, `ota_operator=debug,kube=warn`).
    #[arg(long, global = true, default_value = "info", env = "OTA_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print every CRD as YAML, or write one file per kind into a folder.
    Crds {
        /// Write `<plural>.ota.dev.yaml` files into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print the version of this build.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ota: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    telemetry::init(cli.log_format, &cli.log)?;
    match cli.command {
        Command::Crds { out } => {
            let crds = crdgen::render_all()?;
            match out {
                Some(dir) => {
                    for path in crdgen::write_all(&dir, &crds)? {
                        println!("wrote {}", path.display());
                    }
                }
                None => std::io::stdout()
                    .write_all(crdgen::render_stream(&crds).as_bytes())
                    .context("cannot write to standard output")?,
            }
        }
        Command::Version => println!("ota {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
