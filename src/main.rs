//! The `ota` binary.
#![forbid(unsafe_code)]

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ota_operator::crdgen;

/// ota-operator: live updates for Capacitor apps, declared in Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "ota", version, about, long_about = None)]
struct Cli {
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
