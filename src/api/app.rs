//! The App: one Capacitor app, its storage, its update server and its device store.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::ResourceRequirements, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretReference, conditions_schema};

/// An App declares one Capacitor app (by its app id) and everything that serves its live
/// updates: where bundles are stored, the update server devices talk to, and where device state
/// is kept. Channels, Bundles and Rollouts name it in `appRef`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ota.dev",
    version = "v1alpha1",
    kind = "App",
    plural = "apps",
    namespaced,
    status = "AppStatus",
    derive = "PartialEq",
    shortname = "otaapp",
    category = "ota",
    doc = "An App declares one Capacitor app and everything that serves its live updates.",
    printcolumn(name = "App ID", type_ = "string", json_path = ".spec.appId"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Devices",
        type_ = "integer",
        json_path = ".status.monthlyActiveDevices",
        description = "Devices seen in the last 30 days"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(
    "!has(self.server) || !has(self.server.replicas) || self.server.replicas <= 1 || (has(self.deviceStore) && has(self.deviceStore.postgres))"
).message("an update server with more than one replica needs a shared device store: set deviceStore.postgres"))]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// The Capacitor app id (reverse-DNS, e.g. `com.example.app`), exactly as devices send it in
    /// `app_id`. Immutable: devices and their history are keyed by it.
    #[schemars(length(min = 3, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9]+(\\\\.[A-Za-z0-9_-]+)+$')").message("appId must be a reverse-DNS app id such as com.example.app"),
        validation = Rule::new(super::common::IMMUTABLE_RULE).message("appId is immutable")
    )]
    pub app_id: String,

    /// Platforms this app is built for. Update checks from other platforms are refused.
    #[serde(default = "default_platforms")]
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub platforms: Vec<Platform>,

    /// Where bundle zips and their files are stored.
    pub storage: StorageSpec,

    /// The update server the controller deploys for this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<UpdateServerSpec>,

    /// Where the update server keeps device state (devices, stats, failed-bundle marks).
    /// Defaults to an embedded SQLite file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_store: Option<DeviceStoreSpec>,

    /// End-to-end encryption and signing, as the Capgo updater plugin implements it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,

    /// The Channel that serves devices which ask for no channel and for which no Channel is
    /// public on their platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub default_channel: Option<String>,

    /// Send each bundle's `link` and `comment` to devices with the update (plugin 5.35 / 6.35 /
    /// 7.35 / 8.35 and later).
    #[serde(default)]
    pub expose_metadata: bool,
}

fn default_platforms() -> Vec<Platform> {
    vec![Platform::Ios, Platform::Android]
}

/// A device platform, as the plugin reports it in `platform`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple iOS and iPadOS.
    Ios,
    /// Android.
    Android,
    /// Electron desktop apps.
    Electron,
}

/// Object storage for bundles: exactly one backend, plus settings common to all of them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "[has(self.filesystem), has(self.s3), has(self.gcs), has(self.azure)].filter(x, x).size() == 1"
).message("storage needs exactly one of filesystem, s3, gcs or azure"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// A folder on a volume of the update server (the embedded default, and what standalone mode
    /// uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStorage>,
    /// Amazon S3 or an S3-compatible service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorage>,
    /// Azure Blob Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStorage>,

    /// Key prefix under which this app's objects live (e.g. `apps/com.example.app/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,

    /// A public or CDN base URL that serves the storage's objects by key. When set, devices
    /// download from `<publicBaseUrl>/<prefix>/<key>` instead of presigned or server URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("publicBaseUrl must be an http(s) URL"))]
    pub public_base_url: Option<String>,

    /// How long a presigned download URL stays valid (a duration such as `15m` or `1h`).
    #[serde(default = "default_presign_ttl")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(super::common::DURATION_RULE).message("presignedUrlTtl must be a duration such as 30s, 15m, 1h or 1h30m"))]
    pub presigned_url_ttl: String,
}

fn default_presign_ttl() -> String {
    "1h".to_owned()
}

/// No backend yet (not valid until one is set), no prefix, the default presigned URL TTL: a
/// start for code that fills in one backend.
impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            filesystem: None,
            s3: None,
            gcs: None,
            azure: None,
            prefix: None,
            public_base_url: None,
            presigned_url_ttl: default_presign_ttl(),
        }
    }
}

/// Bundles stored in a folder.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStorage {
    /// The folder. Relative paths are resolved against the standalone folder, or against the
    /// update server's data volume in a cluster.
    #[schemars(length(min = 1, max = 4096))]
    pub path: String,
    /// A PersistentVolumeClaim the update server mounts to hold the folder in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
}

/// Amazon S3 or an S3-compatible object store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// The bucket.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// The region (e.g. `eu-west-1`). S3-compatible services usually accept `us-east-1`.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Endpoint of an S3-compatible service (e.g. `https://minio.storage.svc:9000`); absent for
    /// Amazon S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint must be an http(s) URL"))]
    pub endpoint: Option<String>,
    /// Address buckets by path (`https://host/bucket/key`) rather than by virtual host; most
    /// S3-compatible services need this.
    #[serde(default)]
    pub force_path_style: bool,
    /// A Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`). Absent: the update server's workload identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// Google Cloud Storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcsStorage {
    /// The bucket.
    #[schemars(length(min = 3, max = 222))]
    pub bucket: String,
    /// A custom endpoint (e.g. a fake-gcs-server emulator); absent for
    /// `https://storage.googleapis.com`. Presigned URLs point at it too, but are signed for the
    /// host `storage.googleapis.com` (as the object_store client signs them): an endpoint that
    /// checks signatures under another host name refuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint must be an http(s) URL"))]
    pub endpoint: Option<String>,
    /// A Secret with the key `GOOGLE_SERVICE_ACCOUNT_KEY` holding a service-account JSON key.
    /// Absent: the update server's workload identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
}

/// Azure Blob Storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureStorage {
    /// The storage account.
    #[schemars(length(min = 3, max = 24))]
    pub account: String,
    /// The blob container.
    #[schemars(length(min = 3, max = 63))]
    pub container: String,
    /// A custom endpoint (e.g. an Azurite emulator or a sovereign cloud); absent for Azure's
    /// public cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint must be an http(s) URL"))]
    pub endpoint: Option<String>,
    /// A Secret with the key `AZURE_STORAGE_ACCOUNT_KEY`. Absent: the update server's workload
    /// identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
}

/// The update server that devices talk to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateServerSpec {
    /// Number of update-server pods. More than one needs `deviceStore.postgres`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Scale between these bounds on CPU instead of a fixed replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Container image of the update server; defaults to the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the update-server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The Service in front of the update server.
    #[serde(default)]
    pub service: ServiceSpec,
    /// An Ingress that publishes the update server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// The base URL devices use to reach the server (`updateUrl` is `<publicUrl>/updates`).
    /// Defaults to `https://<ingress.host>` with an ingress, else the Service's cluster URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("publicUrl must be an http(s) URL"))]
    pub public_url: Option<String>,
    /// Request-rate limits of the public endpoints (which devices reach without credentials).
    /// Absent: on, with the defaults of each field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitsSpec>,
}

fn default_replicas() -> i32 {
    1
}

/// Request-rate limits of the update server's public endpoints, counted by each server process
/// (each replica has its own budget). A request over a limit is answered `429 Too Many
/// Requests` with `Retry-After` (whole seconds). `/updates`, `/stats` and `/channel_self` count
/// against both limits; `/files` and `/metrics` against the per-client limit only (one update's
/// download is many files, which a per-App limit would slow down for a whole fleet updating at
/// once); `/healthz` and `/readyz` (the kubelet's probes) against neither.
///
/// A server that serves several Apps (standalone mode, or `ota server` without `--app`) counts
/// a client before it knows the App its request is for: it applies the most generous per-client
/// limit of its Apps (none if one of them is disabled), and a client IP header only when every
/// App names the same one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitsSpec {
    /// `false` turns both limits off (the only way to: a rate of 0 is refused).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// The limit of one client (one IP address; IPv6 clients by their /64 network, which is what
    /// one device or home is given). Default: 1000 requests per second, with a burst of 10000.
    /// A device sends a few requests per app launch, and one request per file of a delta update
    /// (a few thousand at most, all at once); a NAT with thousands of devices behind one address
    /// sends far fewer than 1000 per second.
    #[serde(default = "RateLimit::per_client_default")]
    pub per_client: RateLimit,
    /// The limit of all clients of the App together. Default: 10000 requests per second, with a
    /// burst of 50000: a fleet of 10 million devices launching their app 10 times a day sends
    /// about 3500 per second on average, spread over the replicas; the burst takes a peak of
    /// five times that for a few seconds. One replica answers about 35000 update checks per
    /// second on 2 cores (README, Performance), so the default leaves room for other work.
    #[serde(default = "RateLimit::per_app_default")]
    pub per_app: RateLimit,
    /// A header that carries the client's address, set by a proxy in front of the server (an
    /// Ingress controller, a load balancer): `X-Forwarded-For` or `X-Real-IP`. Absent: the
    /// client is the connection's peer address, which behind a proxy is the proxy's, so every
    /// client through one proxy pod shares one per-client budget. Set it only when every request
    /// reaches the server through that proxy: a client that reaches the server directly can
    /// write any address into it. The header holds plain addresses separated by commas (not the
    /// `Forwarded` header's `for=` syntax); a request without a usable one is counted by its
    /// peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9-]+$')").message("clientIpHeader must be an HTTP header name such as X-Forwarded-For"))]
    pub client_ip_header: Option<String>,
    /// How many proxies in front of the server append to `clientIpHeader`: the client is the
    /// address this many entries from the right (1, the default: the right-most, written by the
    /// proxy next to the server, so that addresses a client wrote into the header itself are
    /// never used). With fewer entries, the left-most is used.
    #[serde(default = "one_proxy")]
    #[schemars(range(min = 1, max = 10))]
    pub trusted_proxies: i32,
}

fn enabled_by_default() -> bool {
    true
}

fn one_proxy() -> i32 {
    1
}

impl Default for RateLimitsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            per_client: RateLimit::per_client_default(),
            per_app: RateLimit::per_app_default(),
            client_ip_header: None,
            trusted_proxies: one_proxy(),
        }
    }
}

/// A rate limit: a token bucket of `burst` requests, refilled at `requestsPerSecond`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second, sustained.
    #[schemars(range(min = 1, max = 100_000_000))]
    pub requests_per_second: i32,
    /// The most requests allowed at once (the bucket's size); at least 1.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub burst: i32,
}

impl RateLimit {
    /// The per-client default: 1000 per second, a burst of 10000.
    pub fn per_client_default() -> Self {
        Self {
            requests_per_second: 1_000,
            burst: 10_000,
        }
    }

    /// The per-App default: 10000 per second, a burst of 50000.
    pub fn per_app_default() -> Self {
        Self {
            requests_per_second: 10_000,
            burst: 50_000,
        }
    }
}

/// Horizontal pod autoscaling of the update server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// The fewest pods.
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// The most pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Target average CPU utilisation, in percent of the CPU request.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percent: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// The Service of the update server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// The Service port.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations for the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

/// A Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only (put an Ingress in front).
    #[default]
    ClusterIP,
    /// Exposed on a port of every node.
    NodePort,
    /// Exposed through the cloud's load balancer.
    LoadBalancer,
}

/// The Ingress of the update server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// The host name devices use (e.g. `updates.example.com`).
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// A Secret of type kubernetes.io/tls for the host; absent: TLS is terminated elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
    /// The IngressClass to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// Annotations for the Ingress (e.g. for cert-manager).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where device state lives: exactly one of an embedded SQLite file or PostgreSQL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.sqlite), has(self.postgres)].filter(x, x).size() == 1")
    .message("deviceStore needs exactly one of sqlite or postgres"))]
#[serde(rename_all = "camelCase")]
pub struct DeviceStoreSpec {
    /// An embedded SQLite database file (one update-server replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteStore>,
    /// A PostgreSQL database, shared by every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStore>,
}

/// An embedded SQLite device store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqliteStore {
    /// A PersistentVolumeClaim that keeps the database across pod restarts; absent: an emptyDir
    /// (device state is lost when the pod goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
}

/// A PostgreSQL device store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStore {
    /// A Secret whose key `url` holds the connection URL
    /// (`postgres://user:password@host:5432/db?sslmode=require`).
    pub url_secret_ref: SecretReference,
}

/// End-to-end encryption and signing (the plugin's v2 scheme).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningSpec {
    /// The app's RSA public key, as in `plugins.CapacitorUpdater.publicKey` of
    /// capacitor.config: PKCS#1 PEM (`-----BEGIN RSA PUBLIC KEY-----`). Devices with this key
    /// are served only encrypted bundles, and its key id is checked against theirs.
    #[schemars(length(min = 1, max = 8192))]
    #[x_kube(validation = Rule::new("self.trim().startsWith('-----BEGIN RSA PUBLIC KEY-----')")
        .message("publicKey must be a PKCS#1 PEM public key (-----BEGIN RSA PUBLIC KEY-----), as the plugin expects"))]
    pub public_key: String,
}

/// What the controller and the update server report about an App.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// Ready, Reconciling, Stalled and Available.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The base URL devices reach (`updateUrl` = `<endpoint>/updates`, `statsUrl` =
    /// `<endpoint>/stats`, `channelUrl` = `<endpoint>/channel_self`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Update-server pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Update-server pods wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Distinct devices that checked for updates in the last 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_active_devices: Option<i64>,
}
