//! Process setup: logging (`tracing` to standard error, as text for people or JSON for log
//! pipelines) and the TLS crypto provider.

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `filter` uses the `RUST_LOG` syntax (e.g. `info` or
/// `ota_operator=debug,kube=warn`); an invalid filter is an error, not a silent default.
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(filter).map_err(|error| TelemetryError::Filter {
        filter: filter.to_owned(),
        reason: error.to_string(),
    })?;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| TelemetryError::Install(e.to_string()))
}

/// Selects the TLS crypto provider for the whole process. Two providers are compiled in (kube
/// uses ring, the S3 client brings aws-lc-rs), so rustls cannot pick one by itself; this must run
/// before the first TLS connection. Calling it again does nothing.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// The chain is a pure function the core's callers use too; it lives in a leaf.
pub use crate::error_chain::error_chain;

/// Errors of setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter '{filter}': {reason}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// Why it does not parse (the parser's own error repeats itself in its source chain).
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("cannot install the logger: {0}")]
    Install(String),
}
