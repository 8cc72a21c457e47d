//! The `ota bundle` and `ota keys` commands for mobile CI: build the zip the plugin verifies,
//! encrypt and sign it, push it into an App's storage through the one bundle sync, write the
//! Bundle (and Channel patch) YAML for a GitOps repository, and compare native dependencies.
//!
//! Every error is one line on standard error and ends the command with an exit code from
//! [`ExitCode`]: 0 ok, 1 invalid input or a failure, 2 a command-line usage error (clap's),
//! 3 storage unreachable or refusing the credentials, 4 native code changed (`ota bundle check`).

pub mod bundle;
mod dist;
pub mod keys;
pub mod kubectl;
mod native;
mod progress;

use std::{io::Write, path::Path};

/// The exit codes, as documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Done.
    Ok = 0,
    /// Invalid input (a missing index.html, a wrong key file, an existing key file, a bad
    /// version, unreadable YAML) or another failure.
    Input = 1,
    /// The command line itself is wrong (clap's own code).
    Usage = 2,
    /// The storage cannot be reached, or refuses the credentials.
    Storage = 3,
    /// `ota bundle check`: native code changed since the release it was compared with.
    NativeChanged = 4,
}

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  invalid input or failure (missing index.html, wrong key, existing key files, bad YAML, ...)
  2  command-line usage error
  3  storage unreachable, or it refused the credentials
  4  native code changed (ota bundle check)";

/// Why a command failed. Its `Display` is one line, never a credential or key material.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Invalid input or a failure.
    #[error("{0}")]
    Input(String),
    /// Storage unreachable or refusing the credentials.
    #[error("{0}")]
    Storage(String),
    /// Native code changed.
    #[error("{0}")]
    NativeChanged(String),
}

impl CliError {
    /// An input error, on one line.
    pub fn input(message: impl AsRef<str>) -> Self {
        CliError::Input(one_line(message.as_ref()))
    }

    /// A storage error, on one line.
    pub fn storage(message: impl AsRef<str>) -> Self {
        CliError::Storage(one_line(message.as_ref()))
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Input(_) => ExitCode::Input,
            CliError::Storage(_) => ExitCode::Storage,
            CliError::NativeChanged(_) => ExitCode::NativeChanged,
        }
    }
}

/// `text` with its line breaks turned into `; ` (errors are one line).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The error chain of `error` on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    one_line(&crate::telemetry::error_chain(error))
}

/// Writes `text` to `path`, or to standard output without one.
fn emit(path: Option<&Path>, text: &str) -> Result<(), CliError> {
    match path {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| CliError::input(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::write(path, text)
                .map_err(|e| CliError::input(format!("cannot write {}: {e}", path.display())))
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError::input(format!("cannot write to standard output: {e}")))
        }
    }
}

/// Reads a text file, naming it in the error.
fn read_text(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("cannot read {what} {}: {e}", path.display())))
}

/// `value` as one YAML document.
fn yaml<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    serde_saphyr::to_string(value).map_err(|e| CliError::input(format!("cannot render YAML: {e}")))
}
