//! The cluster side of the fleet scenarios (tests/fleet.rs): the App, the Bundles, the Channel
//! and the Rollout live in the real test API server, while the update server (`ota server`'s
//! parts: the kube-backed snapshot source, the device listener, the internal listener) and the
//! controller run in this process ([`InProcess`]) on one [`TestClock`], so a scenario crosses an
//! hour-long pause by moving the clock, and a crash drops a part's runtime with every task in it.

#![allow(dead_code)] // tests/fleet.rs and tests/stepwise.rs each use their own part

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use kube::Client;
use object_store::ObjectStoreExt as _;
use ota_operator::{
    analysis,
    clock::TestClock,
    controller,
    server::{self, kube_source::KubeSourceOptions},
};
use serde_json::{Value, json};

use crate::{
    fleet::{APP_ID, BundleFile, InProcess, free_address},
    support,
};

/// The update server and the controller of one namespace, in this process, on one test clock.
pub struct InProcessCluster {
    /// A client of the test's own (the parts open theirs on their runtimes).
    pub client: Client,
    /// The namespace the objects are in and the parts watch.
    pub namespace: String,
    /// The clock both parts decide and stamp on.
    pub clock: TestClock,
    /// Where devices connect (kept across restarts).
    pub listen: SocketAddr,
    /// The update server's internal listener, where the controller reads figures (kept across
    /// restarts).
    internal: SocketAddr,
    database: String,
    storage_root: tempfile::TempDir,
    server: InProcess,
    controller: InProcess,
}

impl InProcessCluster {
    /// Puts the zips in the App's filesystem storage, applies the App, the Bundles (synced by
    /// the controller from their storage keys), the Channel and `rollout` in a fresh namespace,
    /// and starts the update server (device store `database`) and the controller on a test
    /// clock standing at the system clock's now.
    pub async fn start(
        database: String,
        stable: &BundleFile,
        candidate: &BundleFile,
        rollout: Value,
    ) -> InProcessCluster {
        let channel = json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Channel", "metadata": {"name": "production"},
            "spec": {"appRef": "fleet", "bundleRef": stable.name, "public": true, "android": true},
        });
        InProcessCluster::start_with(database, &[stable, candidate], vec![channel, rollout]).await
    }

    /// Puts the zips of `bundles` in the App's filesystem storage, applies the App, the Bundles
    /// and `documents` (in this order) in a fresh namespace, and starts the update server and
    /// the controller as [`InProcessCluster::start`] does.
    pub async fn start_with(
        database: String,
        bundles: &[&BundleFile],
        documents: Vec<Value>,
    ) -> InProcessCluster {
        let client = support::client_with_crds().await;
        let namespace = support::unique_namespace("fleet");
        let storage_root = tempfile::tempdir().expect("a storage root");
        apply_world(&client, &namespace, &storage_root, bundles, documents).await;
        let mut cluster = InProcessCluster {
            client,
            namespace,
            clock: TestClock::starting_now(),
            listen: free_address(),
            internal: free_address(),
            database,
            storage_root,
            // Why an object is not served is logged at debug: a failing scenario prints it.
            server: InProcess::new(
                "the update server",
                "info,ota_operator::server::kube_source=debug",
            ),
            controller: InProcess::new("the controller", "info"),
        };
        cluster.start_server().await;
        cluster.start_controller().await;
        cluster
    }

    async fn start_server(&mut self) {
        let (database, listen, internal) = (self.database.clone(), self.listen, self.internal);
        let storage = server::StorageSetup {
            base_dir: self.storage_root.path().to_owned(),
            credentials: Default::default(),
        };
        let source = KubeSourceOptions {
            namespace: Some(self.namespace.clone()),
            app: None,
        };
        let clock = Arc::new(self.clock.clone());
        let ready = format!("http://{listen}/readyz");
        self.server
            .start(&ready, move || async move {
                // What `ota server` assembles, on the test clock.
                let client = support::client().await;
                let mut boot = server::boot_with_clock(&database, listen, None, storage, clock)
                    .await
                    .map_err(|e| e.to_string())?;
                boot.bind_internal(internal).await.map_err(|e| e.to_string())?;
                let watcher = tokio::spawn(server::kube_source::run(client, source, Arc::clone(&boot.state)));
                let result = server::serve_until(boot, std::future::pending()).await;
                watcher.abort();
                result.map_err(|e| e.to_string())
            })
            .await;
    }

    async fn start_controller(&mut self) {
        let mut options = support::controller::options(&self.namespace, false, "fleet-controller");
        options.storage_dir = self.storage_root.path().to_owned();
        options.figures_url_template = format!("http://{}", self.internal);
        options.clock = Arc::new(self.clock.clone());
        let metrics = free_address();
        let clock: Arc<dyn ota_operator::clock::Clock> = Arc::new(self.clock.clone());
        self.controller
            .start(&format!("http://{metrics}/readyz"), move || async move {
                let client = support::client().await;
                // The real providers, as `ota controller` has them (header Secrets read from
                // the API server), measuring on the scenario's clock.
                let mut options = options;
                options.metrics = Arc::new(
                    analysis::Providers::new(analysis::KubeSecrets::new(client.clone()), clock)
                        .map_err(|e| e.to_string())?,
                );
                let listener = controller::bind(metrics).await.map_err(|e| e.to_string())?;
                controller::run(options, client, listener, std::future::pending())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
    }

    /// `http://<listen>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Crashes the controller (its runtime dropped) and starts it again.
    pub async fn restart_controller(&mut self) {
        self.controller.kill();
        self.start_controller().await;
    }

    /// Crashes the update server (its runtime dropped, unflushed reports lost) and starts it
    /// again on the same device store and addresses.
    pub async fn restart_server(&mut self) {
        self.server.kill();
        self.start_server().await;
    }

    /// The log lines of both parts.
    pub fn logs(&self) -> String {
        format!(
            "--- controller\n{}\n--- server\n{}",
            self.controller.logs(),
            self.server.logs()
        )
    }
}

/// The zips into the filesystem storage `fleet` under `root`, and the objects into `namespace`:
/// the App, the Bundles, then `extra`.
async fn apply_world(
    client: &Client,
    namespace: &str,
    root: &tempfile::TempDir,
    bundles: &[&BundleFile],
    extra: Vec<Value>,
) {
    let storage: ota_operator::api::app::StorageSpec =
        serde_json::from_value(json!({"filesystem": {"path": "fleet"}})).expect("a storage spec");
    let opened = ota_operator::storage::open(&storage, root.path(), &Default::default())
        .expect("the filesystem storage opens");
    let mut documents = vec![json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "App", "metadata": {"name": "fleet"},
        "spec": {"appId": APP_ID, "platforms": ["android"], "storage": storage, "server": {"replicas": 1}},
    })];
    for bundle in bundles {
        let key = format!("uploads/{}.zip", bundle.name);
        let path = ota_operator::sync::object_path(&opened.prefix, &key).expect("a clean key");
        opened
            .store
            .put(&path, bundle.zip.clone().into())
            .await
            .expect("the zip is in storage");
        documents.push(json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle", "metadata": {"name": bundle.name},
            "spec": {"appRef": "fleet", "version": bundle.version, "source": {"storageKey": key, "sha256": bundle.sha256}},
        }));
    }
    documents.extend(extra);
    for document in &documents {
        support::apply_document(client, namespace, document)
            .await
            .unwrap_or_else(|e| panic!("{document} does not apply: {e}"));
    }
}

/// The device store of a scenario's update server, in `dir`.
pub fn database_in(dir: &std::path::Path) -> String {
    format!("sqlite://{}", PathBuf::from(dir).join("devices.db").display())
}
