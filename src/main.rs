//! The `ota` binary.
#![forbid(unsafe_code)]

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ota_operator::{
    cli, controller, crdgen, server, standalone,
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
    /// Serve the YAML of a folder to devices, with no cluster: bundles are synced into each
    /// App's storage, and the folder is re-read when it changes. Object storage credentials come
    /// from the environment, as for `ota server`.
    Standalone {
        /// The folder of App, Channel, Bundle and Rollout YAML.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Where devices connect.
        #[arg(long, default_value = "127.0.0.1:8080", env = "OTA_LISTEN")]
        listen: std::net::SocketAddr,
        /// The base URL devices use, when it is not http://<listen> (e.g. behind a proxy).
        #[arg(long, env = "OTA_PUBLIC_URL")]
        public_url: Option<String>,
        /// The device store: sqlite://FILE or postgres://... [default: DIR/.ota/devices.db]
        #[arg(long, env = "OTA_DATABASE_URL")]
        database: Option<String>,
        /// How often the folder is checked for changes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
        /// Where the internal listener serves rollout figures, /metrics and /healthz (never
        /// through the public Ingress) [default: no internal listener].
        #[arg(long, env = "OTA_INTERNAL_LISTEN")]
        internal_listen: Option<std::net::SocketAddr>,
    },
    /// Serve devices from the App, Channel, Bundle and Rollout objects of a cluster (what the
    /// controller deploys for each App). Object storage credentials come from the environment
    /// (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN], GOOGLE_SERVICE_ACCOUNT_KEY,
    /// AZURE_STORAGE_ACCOUNT_KEY), else the workload's identity.
    Server {
        /// The namespace to watch [default: every namespace].
        #[arg(long, env = "OTA_NAMESPACE")]
        namespace: Option<String>,
        /// Serve only the App of this name.
        #[arg(long, env = "OTA_APP")]
        app: Option<String>,
        /// Where devices connect.
        #[arg(long, default_value = "0.0.0.0:8080", env = "OTA_LISTEN")]
        listen: std::net::SocketAddr,
        /// The base URL devices use (e.g. https://updates.example.com) [default: http://<listen>].
        #[arg(long, env = "OTA_PUBLIC_URL")]
        public_url: Option<String>,
        /// The device store: sqlite://FILE or postgres://...
        #[arg(
            long,
            env = "OTA_DATABASE_URL",
            default_value = "sqlite:///var/lib/ota/devices.db"
        )]
        database: String,
        /// Filesystem storage paths of Apps are resolved against this folder.
        #[arg(long, env = "OTA_STORAGE_ROOT", default_value = "/var/lib/ota/storage")]
        storage_root: PathBuf,
        /// Where the internal listener serves rollout figures, /metrics and /healthz (never
        /// through the public Ingress) [default: no internal listener].
        #[arg(long, env = "OTA_INTERNAL_LISTEN")]
        internal_listen: Option<std::net::SocketAddr>,
    },
    /// Run the operator: deploy each App's update server and report status (with leader
    /// election for several replicas).
    Controller {
        /// The namespace to watch [default: every namespace].
        #[arg(long, env = "OTA_NAMESPACE")]
        namespace: Option<String>,
        /// Hold a Lease before writing, so that only one of several replicas writes.
        #[arg(long, env = "OTA_LEADER_ELECTION", default_value_t = false)]
        leader_election: bool,
        /// The leader Lease's name.
        #[arg(long, env = "OTA_LEASE_NAME", default_value = "ota-operator")]
        lease_name: String,
        /// The leader Lease's namespace [default: the pod's namespace].
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// How long the Lease is held without renewal, in seconds.
        #[arg(long, env = "OTA_LEASE_DURATION_SECONDS", default_value_t = 15)]
        lease_duration_seconds: u64,
        /// This replica's identity in the Lease and in Events [default: the host name].
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Where /metrics, /livez and /readyz are served.
        #[arg(long, env = "OTA_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
        metrics_listen: std::net::SocketAddr,
        /// The update-server image for Apps that name none.
        #[arg(long, env = "OTA_SERVER_IMAGE")]
        server_image: String,
        /// Filesystem storage paths of Apps are resolved against this folder: Bundles of such
        /// Apps are synced into it, so it must be the volume their update servers read.
        #[arg(long, env = "OTA_STORAGE_ROOT", default_value = "/var/lib/ota/storage")]
        storage_root: PathBuf,
        /// Where rollout analysis reads failure figures: the base URL of each App's update-server
        /// internal listener, with {namespace}, {app} (the App's name) and {service} (its
        /// Service) placeholders [default: the App's Service in the cluster].
        #[arg(long, env = "OTA_FIGURES_URL")]
        figures_url: Option<String>,
    },
    /// Build, encrypt, check and publish bundles from mobile CI.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Bundle {
        #[command(subcommand)]
        command: cli::bundle::BundleCommand,
    },
    /// Manage the App's encryption keys.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Keys {
        #[command(subcommand)]
        command: cli::keys::KeysCommand,
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
    telemetry::install_crypto_provider();
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
        Command::Standalone {
            dir,
            listen,
            public_url,
            database,
            poll_ms,
            internal_listen,
        } => {
            let options = standalone::Options {
                dir,
                listen,
                public_url,
                database,
                poll_interval: std::time::Duration::from_millis(poll_ms.max(50)),
                credentials: ota_operator::storage::Credentials::from_env(),
                internal_listen,
                clock: std::sync::Arc::new(ota_operator::clock::SystemClock),
                // The Prometheus and web providers, with the folder's Secrets.
                metrics: None,
            };
            runtime()?.block_on(standalone::run(options, shutdown_signal()))?;
        }
        Command::Server {
            namespace,
            app,
            listen,
            public_url,
            database,
            storage_root,
            internal_listen,
        } => {
            let source = server::kube_source::KubeSourceOptions { namespace, app };
            let storage = server::StorageSetup {
                base_dir: storage_root,
                credentials: ota_operator::storage::Credentials::from_env(),
            };
            runtime()?.block_on(async move {
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach the Kubernetes API")?;
                let mut boot = server::boot(&database, listen, public_url.as_deref(), storage).await?;
                if let Some(internal) = internal_listen {
                    boot.bind_internal(internal).await?;
                }
                tracing::info!(address = %boot.address, "update server listening");
                let watcher = tokio::spawn(server::kube_source::run(
                    client,
                    source,
                    std::sync::Arc::clone(&boot.state),
                ));
                let result = server::serve_until(boot, shutdown_signal()).await;
                watcher.abort();
                result.map_err(anyhow::Error::from)
            })?;
        }
        Command::Controller {
            namespace,
            leader_election,
            lease_name,
            lease_namespace,
            lease_duration_seconds,
            identity,
            metrics_listen,
            server_image,
            storage_root,
            figures_url,
        } => {
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("ota-controller-{}", std::process::id()));
            runtime()?.block_on(async move {
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach the Kubernetes API")?;
                let clock: std::sync::Arc<dyn ota_operator::clock::Clock> =
                    std::sync::Arc::new(controller::SystemClock);
                let metrics = ota_operator::analysis::Providers::new(
                    ota_operator::analysis::KubeSecrets::new(client.clone()),
                    std::sync::Arc::clone(&clock),
                )?;
                let options = controller::Options {
                    namespace,
                    leader_election,
                    lease_name,
                    lease_namespace,
                    lease_duration_seconds,
                    identity,
                    default_server_image: server_image,
                    storage_dir: storage_root,
                    figures_url_template: figures_url
                        .unwrap_or_else(controller::figures::default_url_template),
                    clock,
                    metrics: std::sync::Arc::new(metrics),
                };
                let listener = controller::bind(metrics_listen).await?;
                tracing::info!(address = %metrics_listen, "controller metrics and health listening");
                controller::run(options, client, listener, shutdown_signal())
                    .await
                    .map_err(anyhow::Error::from)
            })?;
        }
        Command::Bundle { command } => {
            if let Err(error) = cli::bundle::run(command) {
                eprintln!("ota: {error}");
                std::process::exit(error.exit_code() as i32);
            }
        }
        Command::Keys { command } => {
            if let Err(error) = cli::keys::run(command) {
                eprintln!("ota: {error}");
                std::process::exit(error.exit_code() as i32);
            }
        }
        Command::Version => println!("ota {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before stopping a pod).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
