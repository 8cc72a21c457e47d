//! `ota controller` in-process against the real test API server (tests/apiserver/apiserver.sh,
//! which serves the built-in kinds with real server-side apply; it runs no Deployment controller
//! and no pods, so the tests write a Deployment's status themselves where the kubelet would).
//! Run with `tests/run.sh --test controller_app`.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    events::v1::Event,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use ota_operator::api::App;
use serde_json::json;
use support::{controller::*, *};

fn filesystem_app(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {
            "appId": "com.example.shop",
            "storage": {"filesystem": {"path": "bundles"}},
            "server": {"replicas": 1}
        }
    })
}

async fn apply_app(client: &Client, namespace: &str, document: &serde_json::Value) -> App {
    let api: Api<App> = Api::namespaced(client.clone(), namespace);
    let name = document["metadata"]["name"].as_str().expect("a name");
    api.patch(
        name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(document),
    )
    .await
    .unwrap_or_else(|e| panic!("the App {name} was refused: {e}"))
}

fn condition<'a>(
    app: &'a App,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Sets a Deployment's ready replicas, as the Deployment controller would once pods are ready.
async fn report_ready_pods(client: &Client, namespace: &str, name: &str, ready: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = api.get(name).await.expect("the Deployment");
    let patch = json!({"status": {
        "observedGeneration": deployment.metadata.generation,
        "replicas": ready, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": ready
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("the Deployment status is written");
}

/// A real update server in this process, on a fresh SQLite file, with an internal listener;
/// two devices of com.example.shop seen now. Returns the internal listener's base URL.
async fn update_server_with_two_devices(folder: &std::path::Path) -> String {
    use ota_operator::{
        devices::{DeviceSeen, Write},
        server::{self, StorageSetup},
        storage::Credentials,
    };
    let database = format!("sqlite://{}", folder.join("devices.db").display());
    let storage = StorageSetup {
        base_dir: folder.to_owned(),
        credentials: Credentials::default(),
    };
    let mut boot = server::boot(&database, "127.0.0.1:0".parse().unwrap(), None, storage)
        .await
        .expect("the update server boots");
    let internal = boot
        .bind_internal("127.0.0.1:0".parse().unwrap())
        .await
        .expect("the internal listener binds");
    let now_ms = boot.state.clock.now_ms();
    let seen = |device_id: &str| {
        Write::SeenDevice(DeviceSeen {
            app_id: "com.example.shop".into(),
            device_id: device_id.into(),
            platform: "android".into(),
            plugin_version: "8.51.14".into(),
            native_version: "1.4.0".into(),
            version_name: "1.4.3".into(),
            custom_id: None,
            default_channel: None,
            is_prod: true,
            is_emulator: false,
            seen_at_ms: now_ms,
            creates_row: true,
        })
    };
    boot.state
        .store
        .apply(&[seen("device-a"), seen("device-b")])
        .await
        .expect("the sightings are written");
    tokio::spawn(server::serve_until(boot, std::future::pending()));
    format!("http://{internal}")
}

#[tokio::test]
async fn an_app_gets_its_update_server_status_and_repairs() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("controller-app");
    let folder = tempfile::tempdir().expect("a folder");
    let mut controller_options = options(&namespace, false, "solo");
    controller_options.figures_url_template = update_server_with_two_devices(folder.path()).await;
    let running = start(&client, controller_options).await;
    let (ready_code, _) = eventually(20, "the controller's caches sync", || async {
        let (code, body) = running.get("/readyz").await;
        (code == 200).then_some((code, body))
    })
    .await;
    assert_eq!(ready_code, 200);
    assert_eq!(running.get("/livez").await.0, 200);

    let app = apply_app(&client, &namespace, &filesystem_app("shop")).await;
    let uid = app.uid().expect("a uid");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = eventually(30, "the Deployment is created", || async {
        deployments.get_opt("ota-shop").await.expect("a read")
    })
    .await;

    // Every child is owned by the App, as its controller.
    let owner_of = |meta: &kube::api::ObjectMeta| {
        let owners = meta.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{:?}", meta.name);
        assert_eq!(owners[0].uid, uid);
        assert_eq!(owners[0].kind, "App");
        assert_eq!(owners[0].controller, Some(true));
    };
    owner_of(&deployment.metadata);
    for meta in [
        Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .get("ota-shop")
            .await
            .expect("a ServiceAccount")
            .metadata,
        Api::<Role>::namespaced(client.clone(), &namespace)
            .get("ota-shop")
            .await
            .expect("a Role")
            .metadata,
        Api::<RoleBinding>::namespaced(client.clone(), &namespace)
            .get("ota-shop")
            .await
            .expect("a RoleBinding")
            .metadata,
        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .get("ota-shop")
            .await
            .expect("a ConfigMap")
            .metadata,
        Api::<Service>::namespaced(client.clone(), &namespace)
            .get("ota-shop")
            .await
            .expect("a Service")
            .metadata,
        Api::<Service>::namespaced(client.clone(), &namespace)
            .get("ota-shop-internal")
            .await
            .expect("the internal port's Service")
            .metadata,
    ] {
        owner_of(&meta);
    }
    let pod = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(IMAGE));
    let security = container.security_context.as_ref().expect("a security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let managed = deployment.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        managed
            .iter()
            .any(|m| m.manager.as_deref() == Some("ota-operator") && m.operation.as_deref() == Some("Apply")),
        "the Deployment is server-side applied by ota-operator: {managed:?}"
    );
    assert!(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
            .get_opt("ota-shop")
            .await
            .expect("a read")
            .is_none()
    );

    // No pod is ready yet: Reconciling, with the generation observed.
    let apps: Api<App> = Api::namespaced(client.clone(), &namespace);
    let waiting = eventually(30, "the App reports Reconciling", || async {
        let app = apps.get("shop").await.expect("the App");
        (condition(&app, "Reconciling").map(|c| c.status.as_str()) == Some("True")).then_some(app)
    })
    .await;
    assert_eq!(
        waiting.status.as_ref().unwrap().observed_generation,
        waiting.metadata.generation
    );
    assert_eq!(
        condition(&waiting, "Ready").map(|c| c.status.as_str()),
        Some("False")
    );

    report_ready_pods(&client, &namespace, "ota-shop", 1).await;
    let ready = eventually(30, "the App becomes Ready", || async {
        let app = apps.get("shop").await.expect("the App");
        (condition(&app, "Ready").map(|c| c.status.as_str()) == Some("True")).then_some(app)
    })
    .await;
    let status = ready.status.clone().expect("a status");
    assert_eq!(status.observed_generation, ready.metadata.generation);
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://ota-shop.{namespace}.svc").as_str())
    );
    assert_eq!((status.replicas, status.ready_replicas), (Some(1), Some(1)));
    assert_eq!(
        condition(&ready, "Stalled").map(|c| c.status.as_str()),
        Some("False")
    );
    // Once a pod is ready, the update server is asked for the monthly active devices.
    assert_eq!(status.monthly_active_devices, Some(2));

    // A deleted child comes back.
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let old_uid = services.get("ota-shop").await.expect("the Service").uid();
    services
        .delete("ota-shop", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually(30, "the deleted Service is recreated", || async {
        services
            .get_opt("ota-shop")
            .await
            .expect("a read")
            .filter(|s| s.uid() != old_uid)
    })
    .await;

    // Two replicas on PostgreSQL: the Deployment follows and a PDB appears.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "shop-pg"},
        "stringData": {"url": "postgres://ota:secret@db:5432/ota"}
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret is created");
    let mut two = filesystem_app("shop");
    two["spec"]["server"]["replicas"] = json!(2);
    two["spec"]["deviceStore"] = json!({"postgres": {"urlSecretRef": {"name": "shop-pg"}}});
    let changed = apply_app(&client, &namespace, &two).await;
    eventually(30, "the Deployment gets 2 replicas", || async {
        let d = deployments.get("ota-shop").await.expect("the Deployment");
        (d.spec.as_ref().and_then(|s| s.replicas) == Some(2)).then_some(())
    })
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
    let pdb = eventually(30, "a PDB is created", || async {
        pdbs.get_opt("ota-shop").await.expect("a read")
    })
    .await;
    assert_eq!(pdb.owner_references()[0].uid, uid);
    let env = deployments
        .get("ota-shop")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let database = env
        .iter()
        .find(|e| e.name == "OTA_DATABASE_URL")
        .expect("the database URL variable");
    assert!(database.value.is_none());
    assert_eq!(
        database
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|s| s.name.as_str()),
        Some("shop-pg")
    );
    let after = eventually(30, "the new generation is observed", || async {
        let app = apps.get("shop").await.expect("the App");
        (app.status.as_ref().and_then(|s| s.observed_generation) == changed.metadata.generation)
            .then_some(app)
    })
    .await;
    assert_eq!(after.status.as_ref().unwrap().replicas, Some(2));

    // Back to one replica: the PDB goes.
    apply_app(&client, &namespace, &filesystem_app("shop")).await;
    eventually(30, "the PDB is removed", || async {
        pdbs.get_opt("ota-shop")
            .await
            .expect("a read")
            .is_none()
            .then_some(())
    })
    .await;

    let (_, metrics) = running.get("/metrics").await;
    assert!(
        metrics.contains("ota_controller_reconciles_total{kind=\"App\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("ota_controller_leader 1"), "{metrics}");
    running.stop().await;
}

#[tokio::test]
async fn an_app_naming_a_missing_secret_is_stalled_with_a_warning_event() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("controller-stalled");
    let running = start(&client, options(&namespace, false, "solo")).await;
    let mut document = filesystem_app("broken");
    document["spec"]["storage"] = json!({
        "s3": {"bucket": "bundles", "credentialsSecretRef": {"name": "no-such-secret"}}
    });
    apply_app(&client, &namespace, &document).await;
    let apps: Api<App> = Api::namespaced(client.clone(), &namespace);
    let stalled = eventually(30, "the App is Stalled", || async {
        let app = apps.get("broken").await.expect("the App");
        (condition(&app, "Stalled").map(|c| c.status.as_str()) == Some("True")).then_some(app)
    })
    .await;
    let condition = condition(&stalled, "Stalled").expect("Stalled");
    assert_eq!(condition.reason, "ReferenceNotFound");
    assert!(
        condition.message.contains("no-such-secret"),
        "{}",
        condition.message
    );
    assert_eq!(
        stalled.status.as_ref().unwrap().observed_generation,
        stalled.metadata.generation
    );
    // Nothing is rolled out that could not start.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    assert!(deployments.get_opt("ota-broken").await.expect("a read").is_none());

    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let warning = eventually(30, "a Warning event is published", || async {
        events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ReferenceNotFound"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(
        warning.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("broken")
    );
    assert!(warning.note.as_deref().unwrap_or("").contains("no-such-secret"));
    running.stop().await;
}

#[tokio::test]
async fn a_replica_that_does_not_hold_the_lease_writes_nothing_until_it_expires() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("controller-lease");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let now = k8s_openapi::jiff::Timestamp::now();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "ota-operator"},
        "spec": {
            "holderIdentity": "the-other-replica",
            "leaseDurationSeconds": 8,
            "acquireTime": now.to_string(),
            "renewTime": now.to_string(),
            "leaseTransitions": 0
        }
    }))
    .expect("a Lease");
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("the Lease is created");

    let running = start(&client, options(&namespace, true, "follower")).await;
    eventually(20, "the follower's caches sync", || async {
        (running.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    apply_app(&client, &namespace, &filesystem_app("shop")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    assert!(
        deployments.get_opt("ota-shop").await.expect("a read").is_none(),
        "a follower applies no child"
    );
    let apps: Api<App> = Api::namespaced(client.clone(), &namespace);
    assert!(
        apps.get("shop").await.expect("the App").status.is_none(),
        "a follower writes no status"
    );
    assert!(
        running
            .get("/metrics")
            .await
            .1
            .contains("ota_controller_leader 0")
    );

    // The other replica stops renewing: the Lease expires and this one takes over.
    eventually(40, "the follower takes the Lease", || async {
        let lease = leases.get("ota-operator").await.expect("the Lease");
        (lease.spec.and_then(|s| s.holder_identity).as_deref() == Some("follower")).then_some(())
    })
    .await;
    eventually(30, "the new leader reconciles the App", || async {
        deployments.get_opt("ota-shop").await.expect("a read")
    })
    .await;
    running.stop().await;
}
