use super::*;
use crate::api::{
    app::{
        AutoscalingSpec, AzureStorage, DeviceStoreSpec, FilesystemStorage, GcsStorage, IngressSpec,
        PostgresStore, ServiceType, SqliteStore,
    },
    common::SecretReference,
};

fn settings() -> RenderSettings {
    RenderSettings {
        default_image: "ghcr.io/example/ota:1.0.0".to_owned(),
    }
}

/// The App of examples/app.yaml, as stored in namespace `shop-ns` with a uid.
fn example_app() -> App {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.yaml"))
        .expect("examples/app.yaml");
    let mut app: App = serde_saphyr::from_str(&text).expect("an App");
    app.metadata.namespace = Some("shop-ns".to_owned());
    app.metadata.uid = Some("0f0e0d0c-1111-2222-3333-444455556666".to_owned());
    app
}

/// A one-replica App on filesystem storage with the SQLite default.
fn filesystem_app() -> App {
    let mut app = example_app();
    app.spec.storage = StorageSpec {
        filesystem: Some(FilesystemStorage {
            path: "bundles".to_owned(),
            persistent_volume_claim: None,
        }),
        s3: None,
        gcs: None,
        azure: None,
        prefix: None,
        public_base_url: None,
        presigned_url_ttl: "1h".to_owned(),
    };
    app.spec.device_store = None;
    app.spec.server = None;
    app
}

fn render_ok(app: &App) -> AppChildren {
    render(app, &settings()).expect("the App renders")
}

fn container(children: &AppChildren) -> &Container {
    &children
        .deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0]
}

fn env_named<'a>(container: &'a Container, name: &str) -> Option<&'a EnvVar> {
    container.env.iter().flatten().find(|e| e.name == name)
}

#[test]
fn every_child_has_the_name_labels_namespace_and_a_controller_owner_reference() {
    let children = render_ok(&example_app());
    let metas = [
        &children.service_account.metadata,
        &children.role.metadata,
        &children.role_binding.metadata,
        &children.config_map.metadata,
        &children.deployment.metadata,
        &children.service.metadata,
        &children.pod_disruption_budget.as_ref().expect("a PDB").metadata,
        &children.ingress.as_ref().expect("an Ingress").metadata,
    ];
    for meta in metas {
        assert_eq!(meta.name.as_deref(), Some("ota-shop"));
        assert_eq!(meta.namespace.as_deref(), Some("shop-ns"));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[label::INSTANCE], "shop");
        assert_eq!(labels[label::NAME], NAME_LABEL_VALUE);
        assert_eq!(labels[label::MANAGED_BY], MANAGED_BY_VALUE);
        assert_eq!(labels[label::APP], "shop");
        let owners = meta.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1);
        let owner = &owners[0];
        assert_eq!(owner.kind, "App");
        assert_eq!(owner.api_version, "ota.dev/v1alpha1");
        assert_eq!(owner.name, "shop");
        assert_eq!(owner.uid, "0f0e0d0c-1111-2222-3333-444455556666");
        assert_eq!(owner.controller, Some(true));
    }
}

#[test]
fn the_role_reads_the_four_kinds_in_the_namespace_and_nothing_more() {
    let children = render_ok(&example_app());
    let rules = children.role.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].api_groups.as_deref(), Some(&["ota.dev".to_owned()][..]));
    let resources = rules[0].resources.clone().expect("resources");
    assert_eq!(resources, ["apps", "channels", "bundles", "rollouts"]);
    // Only what the update server does with them (tests/least_privilege.rs records it): it watches.
    assert_eq!(rules[0].verbs, ["list", "watch"]);
    assert!(rules[0].resource_names.is_none());
    let binding = &children.role_binding;
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "ota-shop");
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(subject.name, "ota-shop");
    assert_eq!(subject.namespace.as_deref(), Some("shop-ns"));
}

#[test]
fn the_pod_runs_hardened() {
    let children = render_ok(&example_app());
    let pod = children
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let pod_security = pod.security_context.as_ref().expect("a pod security context");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let security = container(&children)
        .security_context
        .as_ref()
        .expect("a container security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_ne!(security.run_as_user, Some(0));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("ota-shop"));
}

#[test]
fn the_container_runs_the_server_with_probes_resources_and_the_image() {
    let app = example_app();
    let children = render_ok(&app);
    let container = container(&children);
    assert_eq!(container.args.as_deref(), Some(&["server".to_owned()][..]));
    assert_eq!(container.image.as_deref(), Some("ghcr.io/example/ota:1.0.0"));
    let probe_path = |probe: &Option<Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(
        container.resources,
        app.spec.server.as_ref().and_then(|s| s.resources.clone())
    );
    let mut own_image = app.clone();
    own_image.spec.server.as_mut().unwrap().image = Some("registry.local/ota:dev".to_owned());
    let rendered = render_ok(&own_image);
    assert_eq!(
        super::tests::container(&rendered).image.as_deref(),
        Some("registry.local/ota:dev")
    );
}

#[test]
fn the_config_map_names_the_namespace_and_app_and_the_pods_carry_its_hash() {
    let children = render_ok(&filesystem_app());
    let data = children.config_map.data.as_ref().expect("data");
    assert_eq!(data["OTA_NAMESPACE"], "shop-ns");
    assert_eq!(data["OTA_APP"], "shop");
    assert_eq!(data["OTA_DATABASE_URL"], SQLITE_URL);
    assert_eq!(data["OTA_PUBLIC_URL"], "http://ota-shop.shop-ns.svc");
    let from = &container(&children).env_from.as_ref().expect("envFrom")[0];
    assert_eq!(
        from.config_map_ref.as_ref().map(|c| c.name.as_str()),
        Some("ota-shop")
    );
    let annotations = |children: &AppChildren| {
        children
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
    };
    let hash = annotations(&children).expect("annotations")[annotation::CONFIG_HASH].clone();
    assert_eq!(hash, config_hash(data));
    assert_eq!(hash.len(), 64);

    // A config change (a public URL) changes the hash; rendering again does not.
    let mut changed = filesystem_app();
    changed.spec.server = Some(UpdateServerSpec {
        public_url: Some("https://updates.example.com/".to_owned()),
        ..default_server()
    });
    let changed_children = render_ok(&changed);
    assert_eq!(
        changed_children.config_map.data.as_ref().unwrap()["OTA_PUBLIC_URL"],
        "https://updates.example.com"
    );
    assert_ne!(
        annotations(&changed_children).unwrap()[annotation::CONFIG_HASH],
        hash
    );
    assert_eq!(render_ok(&filesystem_app()), children);
}

#[test]
fn config_hash_separates_keys_from_values() {
    let a = BTreeMap::from([("ab".to_owned(), "c".to_owned())]);
    let b = BTreeMap::from([("a".to_owned(), "bc".to_owned())]);
    assert_ne!(config_hash(&a), config_hash(&b));
}

#[test]
fn credentials_are_referenced_from_the_secret_never_copied() {
    let children = render_ok(&example_app());
    let container = container(&children);
    for (variable, optional) in [
        ("AWS_ACCESS_KEY_ID", None),
        ("AWS_SECRET_ACCESS_KEY", None),
        ("AWS_SESSION_TOKEN", Some(true)),
    ] {
        let env = env_named(container, variable).unwrap_or_else(|| panic!("{variable} is set"));
        assert!(env.value.is_none(), "{variable} has no literal value");
        let selector = env
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("a secretKeyRef");
        assert_eq!(selector.name, "shop-ota-s3");
        assert_eq!(selector.key, variable);
        assert_eq!(selector.optional, optional);
    }
    let database = env_named(container, "OTA_DATABASE_URL").expect("the postgres URL");
    let selector = database
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!(
        (selector.name.as_str(), selector.key.as_str()),
        ("shop-ota-postgres", "url")
    );
    // With PostgreSQL, the ConfigMap holds no database URL (the Secret's wins).
    assert!(
        !children
            .config_map
            .data
            .as_ref()
            .unwrap()
            .contains_key("OTA_DATABASE_URL")
    );
    let config = serde_json::to_string(&children.config_map).unwrap();
    assert!(!config.contains("shop-ota-s3") && !config.contains("postgres://"));

    assert_eq!(
        referenced_secrets(&example_app().spec),
        vec![
            (
                "shop-ota-s3".to_owned(),
                vec!["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
            ),
            ("shop-ota-postgres".to_owned(), vec!["url"]),
        ]
    );
    assert!(referenced_secrets(&filesystem_app().spec).is_empty());
    assert!(container_env_is_empty(&render_ok(&filesystem_app())));
}

fn container_env_is_empty(children: &AppChildren) -> bool {
    container(children).env.is_none()
}

#[test]
fn gcs_and_azure_credentials_use_their_variables() {
    let mut app = filesystem_app();
    app.spec.storage.filesystem = None;
    app.spec.storage.gcs = Some(GcsStorage {
        bucket: "bucket".to_owned(),
        endpoint: None,
        credentials_secret_ref: Some(SecretReference {
            name: "gcs-key".to_owned(),
        }),
    });
    let children = render_ok(&app);
    let env = env_named(container(&children), "GOOGLE_SERVICE_ACCOUNT_KEY").expect("the GCS key");
    let selector = env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap();
    assert_eq!(selector.name, "gcs-key");

    app.spec.storage.gcs = None;
    app.spec.storage.azure = Some(AzureStorage {
        account: "account".to_owned(),
        container: "bundles".to_owned(),
        endpoint: None,
        credentials_secret_ref: Some(SecretReference {
            name: "azure-key".to_owned(),
        }),
    });
    let children = render_ok(&app);
    assert!(env_named(container(&children), "AZURE_STORAGE_ACCOUNT_KEY").is_some());
    assert_eq!(
        referenced_secrets(&app.spec),
        vec![("azure-key".to_owned(), vec!["AZURE_STORAGE_ACCOUNT_KEY"])]
    );
}

#[test]
fn sqlite_lives_on_an_empty_dir_or_its_claim_and_the_root_filesystem_stays_read_only() {
    let volumes = |children: &AppChildren| {
        children
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .clone()
            .unwrap()
    };
    let children = render_ok(&filesystem_app());
    let data = volumes(&children)
        .into_iter()
        .find(|v| v.name == "data")
        .expect("a data volume");
    assert!(data.empty_dir.is_some());
    let mounts = container(&children).volume_mounts.clone().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "data" && m.mount_path == DATA_DIR)
    );
    assert!(mounts.iter().any(|m| m.name == "tmp" && m.mount_path == "/tmp"));
    let strategy = children
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .strategy
        .clone()
        .unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));

    let mut claimed = filesystem_app();
    claimed.spec.device_store = Some(DeviceStoreSpec {
        sqlite: Some(SqliteStore {
            persistent_volume_claim: Some("shop-devices".to_owned()),
        }),
        postgres: None,
    });
    claimed
        .spec
        .storage
        .filesystem
        .as_mut()
        .unwrap()
        .persistent_volume_claim = Some("shop-bundles".to_owned());
    let children = render_ok(&claimed);
    let volumes = volumes(&children);
    let claim_of = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
    };
    assert_eq!(claim_of("data").as_deref(), Some("shop-devices"));
    assert_eq!(claim_of("storage").as_deref(), Some("shop-bundles"));
    assert!(
        container(&children)
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "storage" && m.mount_path == STORAGE_ROOT)
    );
    // One pod holds an SQLite file on a claim: replace it, never run two.
    let strategy = children
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .strategy
        .clone()
        .unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
}

#[test]
fn the_service_follows_the_spec() {
    let mut app = example_app();
    let server = app.spec.server.as_mut().unwrap();
    server.service.port = 8443;
    server.service.type_ = ServiceType::LoadBalancer;
    server.service.annotations = BTreeMap::from([("lb".to_owned(), "internal".to_owned())]);
    server.ingress = None;
    let children = render_ok(&app);
    let spec = children.service.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 8443);
    assert_eq!(port.target_port, Some(IntOrString::String(PORT_NAME.to_owned())));
    assert_eq!(spec.selector, Some(selector_labels("shop")));
    assert_eq!(
        children.service.metadata.annotations.as_ref().unwrap()["lb"],
        "internal"
    );
    assert_eq!(children.endpoint, "http://ota-shop.shop-ns.svc:8443");
    assert!(children.ingress.is_none());
}

#[test]
fn the_internal_port_has_a_cluster_ip_service_of_its_own_never_the_devices_service_or_ingress() {
    let mut app = example_app();
    // Even when the devices' Service is a LoadBalancer.
    app.spec.server.as_mut().unwrap().service.type_ = ServiceType::LoadBalancer;
    let children = render_ok(&app);
    let devices = children.service.spec.as_ref().unwrap();
    assert!(
        devices
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .all(|p| p.port != INTERNAL_PORT),
        "{devices:?}"
    );
    let internal = &children.internal_service;
    assert_eq!(internal.metadata.name.as_deref(), Some("ota-shop-internal"));
    assert_eq!(
        internal.metadata.owner_references,
        children.service.metadata.owner_references
    );
    let spec = internal.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.selector, Some(selector_labels("shop")));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, INTERNAL_PORT);
    assert_eq!(
        port.target_port,
        Some(IntOrString::String(INTERNAL_PORT_NAME.to_owned()))
    );
    let pod = children
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let container_ports = pod.containers[0].ports.as_ref().unwrap();
    assert!(
        container_ports
            .iter()
            .any(|p| p.container_port == INTERNAL_PORT && p.name.as_deref() == Some(INTERNAL_PORT_NAME))
    );
    assert_eq!(
        children.config_map.data.as_ref().unwrap()["OTA_INTERNAL_LISTEN"],
        format!("0.0.0.0:{INTERNAL_PORT}")
    );
    if let Some(ingress) = &children.ingress {
        for rule in ingress.spec.as_ref().unwrap().rules.as_ref().unwrap() {
            for path in &rule.http.as_ref().unwrap().paths {
                let backend = path.backend.service.as_ref().unwrap();
                assert_eq!(backend.name, "ota-shop");
                assert_eq!(backend.port.as_ref().unwrap().name.as_deref(), Some(PORT_NAME));
            }
        }
    }
}

#[test]
fn replicas_above_one_get_a_pdb_and_one_replica_does_not() {
    let children = render_ok(&example_app());
    assert_eq!(children.replicas, 2);
    assert_eq!(children.deployment.spec.as_ref().unwrap().replicas, Some(2));
    let pdb = children.pod_disruption_budget.expect("a PDB");
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(spec.selector.unwrap().match_labels, Some(selector_labels("shop")));

    let single = render_ok(&filesystem_app());
    assert_eq!(single.replicas, 1);
    assert!(single.pod_disruption_budget.is_none());
    assert!(single.autoscaler.is_none());
}

#[test]
fn autoscaling_renders_an_hpa_and_leaves_replicas_to_it() {
    let mut app = example_app();
    app.spec.server.as_mut().unwrap().autoscaling = Some(AutoscalingSpec {
        min_replicas: 2,
        max_replicas: 6,
        target_cpu_utilization_percent: 60,
    });
    let children = render_ok(&app);
    assert_eq!(children.deployment.spec.as_ref().unwrap().replicas, None);
    assert_eq!(children.replicas, 2);
    let hpa = children.autoscaler.expect("an HPA").spec.unwrap();
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    assert_eq!(hpa.scale_target_ref.name, "ota-shop");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 6));
    let metric = &hpa.metrics.unwrap()[0];
    let target = &metric.resource.as_ref().unwrap().target;
    assert_eq!(target.average_utilization, Some(60));
    assert!(children.pod_disruption_budget.is_some());
}

#[test]
fn autoscaling_past_one_pod_without_postgres_is_an_invalid_spec() {
    let mut app = filesystem_app();
    app.spec.server = Some(UpdateServerSpec {
        autoscaling: Some(AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 3,
            target_cpu_utilization_percent: 70,
        }),
        ..default_server()
    });
    let error = render(&app, &settings()).expect_err("refused");
    assert_eq!(
        error,
        RenderError::AutoscalingWithoutSharedStore { max_replicas: 3 }
    );
    assert!(error.to_string().contains("deviceStore.postgres"), "{error}");

    app.spec.device_store = Some(DeviceStoreSpec {
        sqlite: None,
        postgres: Some(PostgresStore {
            url_secret_ref: SecretReference {
                name: "pg".to_owned(),
            },
        }),
    });
    assert!(render(&app, &settings()).is_ok());
}

#[test]
fn the_ingress_publishes_the_host_with_tls_and_sets_the_endpoint() {
    let children = render_ok(&example_app());
    assert_eq!(children.endpoint, "https://updates.example.com");
    let ingress = children.ingress.expect("an Ingress");
    assert_eq!(
        ingress.metadata.annotations.as_ref().unwrap()["cert-manager.io/cluster-issuer"],
        "letsencrypt"
    );
    let spec = ingress.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("updates.example.com"));
    let path = &rule.http.as_ref().unwrap().paths[0];
    assert_eq!(path.path_type, "Prefix");
    assert_eq!(path.backend.service.as_ref().unwrap().name, "ota-shop");
    let tls = &spec.tls.unwrap()[0];
    assert_eq!(tls.secret_name.as_deref(), Some("updates-example-com-tls"));

    let mut without_tls = example_app();
    without_tls.spec.server.as_mut().unwrap().ingress = Some(IngressSpec {
        host: "u.example.org".to_owned(),
        tls_secret_name: None,
        class_name: None,
        annotations: BTreeMap::new(),
    });
    let children = render_ok(&without_tls);
    assert!(children.ingress.unwrap().spec.unwrap().tls.is_none());
}

#[test]
fn names_that_cannot_name_a_service_and_unstored_apps_are_refused() {
    let mut dotted = filesystem_app();
    dotted.metadata.name = Some("shop.v2".to_owned());
    let error = render(&dotted, &settings()).expect_err("a dot is not allowed in a Service name");
    assert!(matches!(error, RenderError::InvalidChildName { ref child, .. } if child == "ota-shop.v2"));
    let mut long = filesystem_app();
    long.metadata.name = Some("a".repeat(60));
    assert!(matches!(
        render(&long, &settings()),
        Err(RenderError::InvalidChildName { .. })
    ));
    // The longest child name is the internal Service's, `ota-<app>-internal`.
    let mut too_long = filesystem_app();
    too_long.metadata.name = Some("a".repeat(51));
    assert!(matches!(
        render(&too_long, &settings()),
        Err(RenderError::InvalidChildName { ref child, .. }) if child.ends_with("-internal")
    ));
    let mut just_fits = filesystem_app();
    just_fits.metadata.name = Some("a".repeat(50));
    assert!(render(&just_fits, &settings()).is_ok());

    let mut no_uid = filesystem_app();
    no_uid.metadata.uid = None;
    assert_eq!(render(&no_uid, &settings()), Err(RenderError::NotStored("uid")));
    let mut no_namespace = filesystem_app();
    no_namespace.metadata.namespace = None;
    assert_eq!(
        render(&no_namespace, &settings()),
        Err(RenderError::NotStored("namespace"))
    );
}
