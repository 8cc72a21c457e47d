//! The update server of one App, rendered as the Kubernetes objects the controller applies:
//! ServiceAccount, Role, RoleBinding, ConfigMap, Deployment, Service, and when the spec asks for
//! them a PodDisruptionBudget, a HorizontalPodAutoscaler and an Ingress.
//!
//! Pure: the same App and settings always give the same objects, so applying them again is a
//! no-op for the API server. Credentials are referenced (`secretKeyRef`), never copied.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
            MetricTarget, ResourceMetricSource,
        },
        core::v1::{
            Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
            EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, PersistentVolumeClaimVolumeSource,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector,
            SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec as K8sServiceSpec, Volume,
            VolumeMount,
        },
        networking::v1::{
            HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
            IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, ServiceBackendPort,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::api::{
    App, AppSpec,
    app::{StorageSpec, UpdateServerSpec},
    constants::{GROUP, MANAGED_BY_VALUE, annotation, label},
};

/// The port the update server listens on inside its pod.
pub const SERVER_PORT: i32 = 8080;
/// The name of that port, used by the probes, the Service and the Ingress.
pub const PORT_NAME: &str = "http";
/// The port of the update server's internal listener (rollout failure figures, metrics): on
/// the Service for the controller, never behind the Ingress.
pub const INTERNAL_PORT: i32 = 9091;
/// The name of that port.
pub const INTERNAL_PORT_NAME: &str = "internal";
/// Where the data volume (SQLite device store, filesystem storage) is mounted.
pub const DATA_DIR: &str = "/var/lib/ota";
/// Filesystem storage paths are resolved under this folder.
pub const STORAGE_ROOT: &str = "/var/lib/ota/storage";
/// The SQLite device store of a server without PostgreSQL.
pub const SQLITE_URL: &str = "sqlite:///var/lib/ota/devices.db";
/// The uid and gid the update server runs as (not root; the distroless "nonroot" user).
pub const RUN_AS_ID: i64 = 65532;
/// The `app.kubernetes.io/name` of every child.
pub const NAME_LABEL_VALUE: &str = "ota-server";
/// The `app.kubernetes.io/component` of every child.
pub const COMPONENT_LABEL_VALUE: &str = "update-server";
/// Child names are `<prefix><app name>`.
pub const CHILD_NAME_PREFIX: &str = "ota-";

/// Settings of the controller that rendering needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderSettings {
    /// The update-server image when the App names none (the operator's own image).
    pub default_image: String,
}

/// Everything the controller applies for one App.
#[derive(Clone, Debug, PartialEq)]
pub struct AppChildren {
    /// The name shared by every child (`ota-<app>`).
    pub name: String,
    /// The namespace of the App and of every child.
    pub namespace: String,
    /// The identity of the update-server pods.
    pub service_account: ServiceAccount,
    /// List and watch on the four ota.dev kinds in the namespace, nothing more: the update
    /// server only watches them (tests/least_privilege.rs checks each request it makes).
    pub role: Role,
    /// Binds `role` to `service_account`.
    pub role_binding: RoleBinding,
    /// The server's settings, read as environment variables.
    pub config_map: ConfigMap,
    /// The update server.
    pub deployment: Deployment,
    /// The Service in front of it, for devices.
    pub service: Service,
    /// The ClusterIP Service of its internal port (`<name>-internal`), for the controller.
    pub internal_service: Service,
    /// Present when more than one pod may run.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// Present when `server.autoscaling` is set.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// Present when `server.ingress` is set.
    pub ingress: Option<Ingress>,
    /// The base URL devices reach.
    pub endpoint: String,
    /// Pods wanted (the fixed count, or the autoscaler's minimum).
    pub replicas: i32,
}

/// Why an App cannot be rendered: spec problems the CRD's schema cannot catch. The controller
/// reports them as Stalled and waits for the App to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The App has no name, namespace or uid (it was never stored by an API server).
    #[error("the App has no {0}: it must be read from the API server before it is rendered")]
    NotStored(&'static str),
    /// The children's name is not a valid Service name.
    #[error(
        "the App name {app:?} gives the child name {child:?}, which is not a valid Service name \
         (at most 63 lower-case letters, digits and '-', starting with a letter): rename the App"
    )]
    InvalidChildName {
        /// The App's name.
        app: String,
        /// The child name it gives.
        child: String,
    },
    /// An autoscaler that may run several pods with a device store only one pod can use.
    #[error(
        "server.autoscaling.maxReplicas is {max_replicas}, but more than one update-server pod needs \
         a shared device store: set deviceStore.postgres or maxReplicas: 1"
    )]
    AutoscalingWithoutSharedStore {
        /// The autoscaler's maximum.
        max_replicas: i32,
    },
}

/// The name of the ClusterIP Service of the update server's internal port.
pub fn internal_service_name(app_name: &str) -> String {
    format!("{}-internal", child_name(app_name))
}

/// The name of every child of the App called `app_name`.
pub fn child_name(app_name: &str) -> String {
    format!("{CHILD_NAME_PREFIX}{app_name}")
}

/// Whether `name` is an RFC 1035 label (what a Service name must be).
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The labels of every child; `selector_labels` is the stable subset pods are selected by.
pub fn child_labels(app_name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(app_name);
    labels.insert(label::MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(label::APP.to_owned(), app_name.to_owned());
    labels
}

/// The labels a Deployment selects its pods by (immutable once the Deployment exists).
pub fn selector_labels(app_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (label::NAME.to_owned(), NAME_LABEL_VALUE.to_owned()),
        (label::INSTANCE.to_owned(), app_name.to_owned()),
        (label::COMPONENT.to_owned(), COMPONENT_LABEL_VALUE.to_owned()),
    ])
}

/// The URL devices use: `server.publicUrl`, else `https://<ingress host>`, else the Service's
/// cluster URL.
pub fn endpoint(app_name: &str, namespace: &str, server: &UpdateServerSpec) -> String {
    if let Some(url) = &server.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    if let Some(ingress) = &server.ingress {
        return format!("https://{}", ingress.host);
    }
    let host = format!("{}.{namespace}.svc", child_name(app_name));
    if server.service.port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{}", server.service.port)
    }
}

/// The environment variables that carry object storage credentials, each from the key of the
/// same name in the App's credentials Secret. The bool says whether the key must exist.
fn credential_env(storage: &StorageSpec) -> Vec<EnvVar> {
    let (secret, keys): (_, &[(&str, bool)]) = if let Some(s3) = &storage.s3 {
        (
            s3.credentials_secret_ref.as_ref(),
            &[
                ("AWS_ACCESS_KEY_ID", true),
                ("AWS_SECRET_ACCESS_KEY", true),
                ("AWS_SESSION_TOKEN", false),
            ],
        )
    } else if let Some(gcs) = &storage.gcs {
        (
            gcs.credentials_secret_ref.as_ref(),
            &[("GOOGLE_SERVICE_ACCOUNT_KEY", true)],
        )
    } else if let Some(azure) = &storage.azure {
        (
            azure.credentials_secret_ref.as_ref(),
            &[("AZURE_STORAGE_ACCOUNT_KEY", true)],
        )
    } else {
        (None, &[])
    };
    let Some(secret) = secret else {
        return Vec::new();
    };
    keys.iter()
        .map(|(key, required)| secret_env(key, &secret.name, key, !required))
        .collect()
}

fn secret_env(variable: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: variable.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Secrets the App names (credentials, PostgreSQL URL), with the keys that must be in them.
/// The controller checks they exist before it rolls out pods that would fail to start.
pub fn referenced_secrets(spec: &AppSpec) -> Vec<(String, Vec<&'static str>)> {
    let mut secrets = Vec::new();
    let storage = &spec.storage;
    if let Some(secret) = storage
        .s3
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
    {
        secrets.push((
            secret.name.clone(),
            vec!["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
        ));
    }
    if let Some(secret) = storage
        .gcs
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
    {
        secrets.push((secret.name.clone(), vec!["GOOGLE_SERVICE_ACCOUNT_KEY"]));
    }
    if let Some(secret) = storage
        .azure
        .as_ref()
        .and_then(|s| s.credentials_secret_ref.as_ref())
    {
        secrets.push((secret.name.clone(), vec!["AZURE_STORAGE_ACCOUNT_KEY"]));
    }
    if let Some(postgres) = spec.device_store.as_ref().and_then(|d| d.postgres.as_ref()) {
        secrets.push((postgres.url_secret_ref.name.clone(), vec!["url"]));
    }
    secrets
}

/// The sha256 (hex) of a ConfigMap's data, put on the pod template so a config change rolls the
/// pods.
pub fn config_hash(data: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        // Length-prefixed, so ("ab","c") and ("a","bc") hash differently.
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Renders every child of `app`.
pub fn render(app: &App, settings: &RenderSettings) -> Result<AppChildren, RenderError> {
    let app_name = app.metadata.name.clone().ok_or(RenderError::NotStored("name"))?;
    let namespace = app
        .metadata
        .namespace
        .clone()
        .ok_or(RenderError::NotStored("namespace"))?;
    let owner: OwnerReference = app
        .controller_owner_ref(&())
        .ok_or(RenderError::NotStored("uid"))?;
    let name = child_name(&app_name);
    let internal_name = internal_service_name(&app_name);
    for child in [&name, &internal_name] {
        if !is_dns_label(child) {
            return Err(RenderError::InvalidChildName {
                app: app_name,
                child: child.clone(),
            });
        }
    }
    let spec = &app.spec;
    let server = spec.server.clone().unwrap_or_else(default_server);
    let shared_store = spec.device_store.as_ref().is_some_and(|d| d.postgres.is_some());
    if let Some(autoscaling) = &server.autoscaling
        && autoscaling.max_replicas > 1
        && !shared_store
    {
        return Err(RenderError::AutoscalingWithoutSharedStore {
            max_replicas: autoscaling.max_replicas,
        });
    }
    let replicas = server
        .autoscaling
        .as_ref()
        .map_or(server.replicas, |a| a.min_replicas);
    let may_run_several = server
        .autoscaling
        .as_ref()
        .map_or(server.replicas, |a| a.max_replicas)
        > 1;
    let endpoint = endpoint(&app_name, &namespace, &server);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(child_labels(&app_name)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };

    let service_account = ServiceAccount {
        metadata: meta.clone(),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![GROUP.to_owned()]),
            resources: Some(
                ["apps", "channels", "bundles", "rollouts"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
            verbs: ["list", "watch"].map(str::to_owned).to_vec(),
            ..Default::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: meta.clone(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.clone(),
            namespace: Some(namespace.clone()),
            ..Default::default()
        }]),
    };

    let mut config = BTreeMap::from([
        ("OTA_NAMESPACE".to_owned(), namespace.clone()),
        ("OTA_APP".to_owned(), app_name.clone()),
        ("OTA_LISTEN".to_owned(), format!("0.0.0.0:{SERVER_PORT}")),
        (
            "OTA_INTERNAL_LISTEN".to_owned(),
            format!("0.0.0.0:{INTERNAL_PORT}"),
        ),
        ("OTA_PUBLIC_URL".to_owned(), endpoint.clone()),
        ("OTA_STORAGE_ROOT".to_owned(), STORAGE_ROOT.to_owned()),
        ("OTA_LOG_FORMAT".to_owned(), "json".to_owned()),
        // glibc gives each thread that allocates its own arena; the device store's writer and
        // compaction threads then hold memory apart from the request workers'. With two, the
        // benchmark peaked at 48.6 MiB; the run before, without the setting, at 77.6 MiB.
        ("MALLOC_ARENA_MAX".to_owned(), "2".to_owned()),
    ]);
    if !shared_store {
        config.insert("OTA_DATABASE_URL".to_owned(), SQLITE_URL.to_owned());
    }
    let hash = config_hash(&config);
    let config_map = ConfigMap {
        metadata: meta.clone(),
        data: Some(config),
        ..Default::default()
    };

    let deployment = render_deployment(&meta, &app_name, spec, &server, settings, &hash, replicas);

    let service = Service {
        metadata: ObjectMeta {
            annotations: (!server.service.annotations.is_empty()).then(|| server.service.annotations.clone()),
            ..meta.clone()
        },
        spec: Some(K8sServiceSpec {
            type_: Some(format!("{:?}", server.service.type_)),
            selector: Some(selector_labels(&app_name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: server.service.port,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The internal port gets a ClusterIP Service of its own: the devices' Service may be a
    // LoadBalancer or NodePort, which would expose it outside the cluster.
    let internal_service = Service {
        metadata: ObjectMeta {
            name: Some(internal_name.clone()),
            ..meta.clone()
        },
        spec: Some(K8sServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(&app_name)),
            ports: Some(vec![ServicePort {
                name: Some(INTERNAL_PORT_NAME.to_owned()),
                port: INTERNAL_PORT,
                target_port: Some(IntOrString::String(INTERNAL_PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let pod_disruption_budget = may_run_several.then(|| PodDisruptionBudget {
        metadata: meta.clone(),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&app_name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    let autoscaler = server
        .autoscaling
        .as_ref()
        .map(|autoscaling| HorizontalPodAutoscaler {
            metadata: meta.clone(),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".to_owned()),
                    kind: "Deployment".to_owned(),
                    name: name.clone(),
                },
                min_replicas: Some(autoscaling.min_replicas),
                max_replicas: autoscaling.max_replicas,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".to_owned(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".to_owned(),
                        target: MetricTarget {
                            type_: "Utilization".to_owned(),
                            average_utilization: Some(autoscaling.target_cpu_utilization_percent),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });

    let ingress = server.ingress.as_ref().map(|spec| Ingress {
        metadata: ObjectMeta {
            annotations: (!spec.annotations.is_empty()).then(|| spec.annotations.clone()),
            ..meta.clone()
        },
        spec: Some(K8sIngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: name.clone(),
                                port: Some(ServiceBackendPort {
                                    name: Some(PORT_NAME.to_owned()),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    Ok(AppChildren {
        name,
        namespace,
        service_account,
        role,
        role_binding,
        config_map,
        deployment,
        service,
        internal_service,
        pod_disruption_budget,
        autoscaler,
        ingress,
        endpoint,
        replicas,
    })
}

/// The server settings of an App without `server`: the schema's defaults.
fn default_server() -> UpdateServerSpec {
    UpdateServerSpec {
        replicas: 1,
        autoscaling: None,
        image: None,
        resources: None,
        service: Default::default(),
        ingress: None,
        public_url: None,
        rate_limits: None,
    }
}

fn render_deployment(
    meta: &ObjectMeta,
    app_name: &str,
    spec: &AppSpec,
    server: &UpdateServerSpec,
    settings: &RenderSettings,
    config_hash: &str,
    replicas: i32,
) -> Deployment {
    let name = meta.name.clone().unwrap_or_default();
    let mut env = credential_env(&spec.storage);
    if let Some(postgres) = spec.device_store.as_ref().and_then(|d| d.postgres.as_ref()) {
        env.push(secret_env(
            "OTA_DATABASE_URL",
            &postgres.url_secret_ref.name,
            "url",
            false,
        ));
    }
    let mut volumes = vec![
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        data_volume(spec),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..Default::default()
        },
        VolumeMount {
            name: "data".to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..Default::default()
        },
    ];
    if let Some(claim) = spec
        .storage
        .filesystem
        .as_ref()
        .and_then(|f| f.persistent_volume_claim.as_ref())
    {
        volumes.push(Volume {
            name: "storage".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "storage".to_owned(),
            mount_path: STORAGE_ROOT.to_owned(),
            ..Default::default()
        });
    }
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    let container = Container {
        name: "server".to_owned(),
        image: Some(
            server
                .image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        args: Some(vec!["server".to_owned()]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some(PORT_NAME.to_owned()),
                container_port: SERVER_PORT,
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(INTERNAL_PORT_NAME.to_owned()),
                container_port: INTERNAL_PORT,
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
        ]),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        resources: server.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_ID),
            run_as_group: Some(RUN_AS_ID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let mut pod_labels = child_labels(app_name);
    pod_labels.extend(selector_labels(app_name));
    Deployment {
        metadata: meta.clone(),
        spec: Some(DeploymentSpec {
            // With an autoscaler the replica count is its to set: leaving the field out keeps
            // this manager from fighting it.
            replicas: server.autoscaling.is_none().then_some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(app_name)),
                ..Default::default()
            },
            strategy: Some(deployment_strategy(spec)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        annotation::CONFIG_HASH.to_owned(),
                        config_hash.to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_ID),
                        run_as_group: Some(RUN_AS_ID),
                        fs_group: Some(RUN_AS_ID),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..Default::default()
    }
}

/// An SQLite file on a PersistentVolumeClaim can be open in one pod only, so such a Deployment
/// replaces its pod (Recreate) instead of surging a second one.
fn deployment_strategy(spec: &AppSpec) -> DeploymentStrategy {
    let sqlite_claim = spec
        .device_store
        .as_ref()
        .and_then(|d| d.sqlite.as_ref())
        .and_then(|s| s.persistent_volume_claim.as_ref());
    match sqlite_claim {
        Some(_) => DeploymentStrategy {
            type_: Some("Recreate".to_owned()),
            ..Default::default()
        },
        None => DeploymentStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        },
    }
}

/// The data volume at [`DATA_DIR`]: the SQLite store's claim when it names one, else an
/// emptyDir.
fn data_volume(spec: &AppSpec) -> Volume {
    let claim = spec
        .device_store
        .as_ref()
        .and_then(|d| d.sqlite.as_ref())
        .and_then(|s| s.persistent_volume_claim.clone());
    match claim {
        Some(claim_name) => Volume {
            name: "data".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                ..Default::default()
            }),
            ..Default::default()
        },
        None => Volume {
            name: "data".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests;
