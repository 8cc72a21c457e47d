//! The built-in kinds the controller creates and uses (its App children, Events, the leader
//! Lease), against the real test API server (tests/apiserver/apiserver.sh: the same server as
//! the CRDs, with these kinds stored in its etcd through k8s.io/apiserver's generic registry).
//! Each kind is applied with server-side apply, read back, re-applied with a change, and its
//! managed fields checked; a Deployment's status goes through the status subresource.

mod support;

use std::fmt::Debug;

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event as CoreEvent, Namespace, Secret, Service, ServiceAccount},
    events::v1::Event as EventsEvent,
    networking::v1::Ingress,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    core::{GroupVersionKind, Status},
    discovery::{Discovery, Scope},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use support::*;

/// The field manager of the applies in this file.
const MANAGER: &str = "ota-test";

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// The API error of a result that must have failed.
fn api_error<T: Debug>(result: Result<T, kube::Error>, what: &str) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

/// The managed-fields entry of `manager` (and `subresource`, "" for the main resource).
fn managed_entry<K: Resource>(
    object: &K,
    manager: &str,
    subresource: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry> {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .find(|entry| {
            entry.manager.as_deref() == Some(manager)
                && entry.subresource.as_deref().unwrap_or("") == subresource
        })
        .cloned()
}

/// The fields `manager` owns (the `fieldsV1` tree of its entry), or Null.
fn owned_fields<K: Resource>(object: &K, manager: &str, subresource: &str) -> Value {
    managed_entry(object, manager, subresource)
        .and_then(|entry| entry.fields_v1)
        .map(|fields| fields.0)
        .unwrap_or(Value::Null)
}

/// Applies `first`, reads it back, then applies `second` (the same object with a change, and
/// without the label `dropped`), and checks what server-side apply guarantees: everything
/// applied reads back, `MANAGER` owns it through an Apply entry, and a field the manager stops
/// applying is removed. Returns the object as read after the second apply.
async fn apply_twice<K>(api: &Api<K>, first: Value, second: Value) -> K
where
    K: Resource + Clone + Debug + DeserializeOwned + Serialize,
{
    let name = first["metadata"]["name"].as_str().expect("a name").to_owned();
    assert_eq!(
        first["metadata"]["labels"]["dropped"], "yes",
        "the first apply carries the label"
    );
    assert!(second["metadata"]["labels"].get("dropped").is_none());

    let applied = api
        .patch(&name, &apply_params(), &Patch::Apply(&first))
        .await
        .unwrap_or_else(|e| panic!("applying {name} was refused: {e}"));
    let read = api.get(&name).await.expect("the applied object reads back");
    let read_json = serde_json::to_value(&read).expect("an object serializes");
    contains_all(&first, &read_json, "")
        .unwrap_or_else(|e| panic!("{name} did not read back as applied: {e}"));
    assert_eq!(applied.meta().uid, read.meta().uid);
    let entry = managed_entry(&read, MANAGER, "").expect("the manager has a managed-fields entry");
    assert_eq!(entry.operation.as_deref(), Some("Apply"), "{entry:?}");
    assert_eq!(
        owned_fields(&read, MANAGER, "")["f:metadata"]["f:labels"]["f:dropped"],
        json!({}),
        "the manager owns the label it applied: {entry:?}"
    );

    api.patch(&name, &apply_params(), &Patch::Apply(&second))
        .await
        .unwrap_or_else(|e| panic!("re-applying {name} was refused: {e}"));
    let reread = api.get(&name).await.expect("the re-applied object reads back");
    let reread_json = serde_json::to_value(&reread).expect("an object serializes");
    contains_all(&second, &reread_json, "")
        .unwrap_or_else(|e| panic!("{name} did not read back as re-applied: {e}"));
    assert!(
        !reread.labels().contains_key("dropped"),
        "a label the manager no longer applies is removed: {:?}",
        reread.labels()
    );
    assert!(
        owned_fields(&reread, MANAGER, "")["f:metadata"]["f:labels"]
            .get("f:dropped")
            .is_none(),
        "the manager no longer owns the dropped label"
    );
    assert_eq!(
        read.meta().uid,
        reread.meta().uid,
        "re-applying updates, not recreates"
    );
    assert_ne!(read.meta().resource_version, reread.meta().resource_version);
    reread
}

/// `metadata` for an object of this file: a name, the namespace, and the two test labels
/// (`dropped` only in the first apply).
fn metadata(name: &str, namespace: Option<&str>, first: bool) -> Value {
    let mut labels = json!({"app.kubernetes.io/name": "ota-test"});
    if first {
        labels["dropped"] = json!("yes");
    }
    let mut meta = json!({"name": name, "labels": labels});
    if let Some(namespace) = namespace {
        meta["namespace"] = json!(namespace);
    }
    meta
}

#[tokio::test]
async fn a_namespace_applies_and_reapplies() {
    let client = client().await;
    let name = unique_namespace("builtin-ns");
    let api: Api<Namespace> = Api::all(client);
    let object =
        |first| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata(&name, None, first)});
    let namespace = apply_twice(&api, object(true), object(false)).await;
    assert_eq!(
        namespace.metadata.namespace, None,
        "a Namespace is cluster-scoped"
    );
    let phase = namespace.status.and_then(|s| s.phase);
    assert_eq!(
        phase.as_deref(),
        Some("Active"),
        "a Namespace is Active from its creation"
    );
}

#[tokio::test]
async fn a_service_account_applies_and_reapplies() {
    let client = client().await;
    let ns = unique_namespace("builtin-sa");
    let api: Api<ServiceAccount> = Api::namespaced(client, &ns);
    let object = |first: bool| {
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata("server", Some(&ns), first),
               "automountServiceAccountToken": !first})
    };
    let account = apply_twice(&api, object(true), object(false)).await;
    assert_eq!(account.automount_service_account_token, Some(true));
}

#[tokio::test]
async fn a_role_and_its_binding_apply_and_reapply() {
    let client = client().await;
    let ns = unique_namespace("builtin-rbac");
    let rule = json!({"apiGroups": ["ota.dev"], "resources": ["apps", "channels", "bundles", "rollouts"],
                      "verbs": ["get", "list", "watch"]});
    let role = |first: bool| {
        let mut rules = vec![rule.clone()];
        if first {
            rules.push(json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}));
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": metadata("server", Some(&ns), first), "rules": rules})
    };
    let role = apply_twice(
        &Api::<Role>::namespaced(client.clone(), &ns),
        role(true),
        role(false),
    )
    .await;
    assert_eq!(role.rules.map(|r| r.len()), Some(1), "the dropped rule is gone");

    let binding = |first: bool| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": metadata("server", Some(&ns), first),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "server"},
               "subjects": [{"kind": "ServiceAccount", "name": if first { "old" } else { "server" },
                             "namespace": ns}]})
    };
    let binding = apply_twice(
        &Api::<RoleBinding>::namespaced(client, &ns),
        binding(true),
        binding(false),
    )
    .await;
    assert_eq!(binding.subjects.expect("subjects")[0].name, "server");
}

#[tokio::test]
async fn a_config_map_and_a_secret_apply_and_reapply() {
    let client = client().await;
    let ns = unique_namespace("builtin-data");
    let config = |first: bool| {
        let data = if first {
            json!({"config.yaml": "listen: 0.0.0.0:8080\n", "old": "x"})
        } else {
            json!({"config.yaml": "listen: 0.0.0.0:9090\n"})
        };
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata("server", Some(&ns), first),
               "data": data})
    };
    let config_map = apply_twice(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        config(true),
        config(false),
    )
    .await;
    let data = config_map.data.expect("data");
    assert_eq!(
        data.len(),
        1,
        "the key the manager stopped applying is removed: {data:?}"
    );

    let secrets = Api::<Secret>::namespaced(client, &ns);
    let secret = |first: bool| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata("s3", Some(&ns), first),
               "type": "Opaque", "data": {"accessKey": if first { "QUs=" } else { "QUsy" }}})
    };
    let secret = apply_twice(&secrets, secret(true), secret(false)).await;
    assert_eq!(
        secret.data.expect("data")["accessKey"].0,
        b"AK2",
        "base64 data is decoded and stored as bytes"
    );

    // As in kube-apiserver, stringData is write-only: merged into data; the type defaults to Opaque.
    let written = secrets
        .patch(
            "token",
            &apply_params(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"},
                                 "data": {"a": "YQ==", "b": "YQ=="}, "stringData": {"b": "bee"}}),
            ),
        )
        .await
        .expect("a Secret with stringData applies");
    assert_eq!(written.type_.as_deref(), Some("Opaque"));
    assert_eq!(written.string_data, None, "stringData is not stored");
    let data = written.data.expect("data");
    assert_eq!(
        (data["a"].0.as_slice(), data["b"].0.as_slice()),
        (&b"a"[..], &b"bee"[..])
    );
}

fn deployment(ns: &str, first: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata("server", Some(ns), first),
        "spec": {
            "replicas": if first { 2 } else { 3 },
            "selector": {"matchLabels": {"app.kubernetes.io/name": "ota-test"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "ota-test"}},
                "spec": {
                    "serviceAccountName": "server",
                    "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "server",
                        "image": format!("ghcr.io/example/ota:{}", if first { "1.0.0" } else { "1.1.0" }),
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "env": if first { json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]) }
                               else { json!([{"name": "A", "value": "1"}]) },
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                      "limits": {"memory": "128Mi"}},
                        "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                            "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    })
}

#[tokio::test]
async fn a_deployment_applies_and_reapplies_with_generation_counting_spec_changes() {
    let client = client().await;
    let ns = unique_namespace("builtin-deploy");
    let api = Api::<Deployment>::namespaced(client, &ns);
    let created = api
        .patch("server", &apply_params(), &Patch::Apply(deployment(&ns, true)))
        .await
        .expect("the first apply");
    assert_eq!(created.metadata.generation, Some(1));
    // Re-applying the same object changes nothing, so the generation stays.
    let same = api
        .patch("server", &apply_params(), &Patch::Apply(deployment(&ns, true)))
        .await
        .expect("the same apply again");
    assert_eq!(same.metadata.generation, Some(1));
    assert_eq!(
        same.metadata.resource_version, created.metadata.resource_version,
        "a no-op apply writes nothing"
    );

    let changed = apply_twice(&api, deployment(&ns, true), deployment(&ns, false)).await;
    assert_eq!(changed.metadata.generation, Some(2), "the spec changed once");
    let container = &changed
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers[0];
    assert_eq!(
        container.env.as_ref().map(|e| e.len()),
        Some(1),
        "the dropped env var is gone"
    );
}

#[tokio::test]
async fn a_service_a_pdb_an_hpa_and_an_ingress_apply_and_reapply() {
    let client = client().await;
    let ns = unique_namespace("builtin-net");
    let service = |first: bool| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata("server", Some(&ns), first),
               "spec": {"selector": {"app.kubernetes.io/name": "ota-test"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
                        "type": if first { "NodePort" } else { "ClusterIP" }}})
    };
    apply_twice(
        &Api::<Service>::namespaced(client.clone(), &ns),
        service(true),
        service(false),
    )
    .await;

    let pdb = |first: bool| {
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": metadata("server", Some(&ns), first),
               "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "ota-test"}},
                        "minAvailable": if first { json!(1) } else { json!("50%") }}})
    };
    let pdb = apply_twice(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        pdb(true),
        pdb(false),
    )
    .await;
    assert_eq!(
        serde_json::to_value(pdb.spec.expect("spec").min_available).unwrap(),
        json!("50%"),
        "an int-or-string reads back as applied"
    );

    let hpa = |first: bool| {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata("server", Some(&ns), first),
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "server"},
                 "minReplicas": 2, "maxReplicas": if first { 5 } else { 10 },
                 "metrics": [{
                     "type": "Resource",
                     "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
                 }]}})
    };
    apply_twice(
        &Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns),
        hpa(true),
        hpa(false),
    )
    .await;

    let ingress = |first: bool| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": metadata("server", Some(&ns), first),
        "spec": {"ingressClassName": "nginx",
                 "tls": [{"hosts": ["ota.example.com"], "secretName": "ota-tls"}],
                 "rules": [{
                     "host": if first { "old.example.com" } else { "ota.example.com" },
                     "http": {"paths": [{
                         "path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "server", "port": {"name": "http"}}}
                     }]}
                 }]}})
    };
    apply_twice(
        &Api::<Ingress>::namespaced(client, &ns),
        ingress(true),
        ingress(false),
    )
    .await;
}

#[tokio::test]
async fn a_lease_applies_and_refuses_a_stale_write() {
    let client = client().await;
    let ns = unique_namespace("builtin-lease");
    let api = Api::<Lease>::namespaced(client, &ns);
    let lease = |first: bool| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": metadata("ota-controller", Some(&ns), first),
               "spec": {"holderIdentity": if first { "replica-a" } else { "replica-b" },
                        "leaseDurationSeconds": 15,
                        "acquireTime": "2025-01-01T00:00:00.000000Z",
                        "renewTime": "2025-01-01T00:00:10.000000Z",
                        "leaseTransitions": if first { 0 } else { 1 }}})
    };
    let current = apply_twice(&api, lease(true), lease(false)).await;
    let spec = current.spec.clone().expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(
        spec.renew_time.map(|t| t.0.to_string()),
        Some("2025-01-01T00:00:10Z".to_owned()),
        "MicroTime reads back"
    );

    // Leader election relies on optimistic concurrency: a write based on an old read loses.
    let mut taken = current.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("replica-c".into());
    api.replace("ota-controller", &PostParams::default(), &taken)
        .await
        .expect("a write based on the latest read succeeds");
    let mut stale = current;
    stale.spec.as_mut().unwrap().holder_identity = Some("replica-a".into());
    let conflict = api_error(
        api.replace("ota-controller", &PostParams::default(), &stale)
            .await,
        "a write with a stale resourceVersion",
    );
    assert_eq!(conflict.code, 409, "{conflict:?}");
    let holder = api
        .get("ota-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(
        holder.as_deref(),
        Some("replica-c"),
        "the stale write changed nothing"
    );
}

#[tokio::test]
async fn core_and_events_k8s_io_events_apply_and_reapply() {
    let client = client().await;
    let ns = unique_namespace("builtin-events");
    let regarding = json!({"apiVersion": "ota.dev/v1alpha1", "kind": "App", "name": "shop", "namespace": ns});
    let core = |first: bool| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": metadata("shop.1", Some(&ns), first),
               "involvedObject": regarding, "reason": "Reconciled", "type": "Normal",
               "message": if first { "first" } else { "second" }, "count": if first { 1 } else { 2 },
               "source": {"component": "ota-controller"}})
    };
    apply_twice(
        &Api::<CoreEvent>::namespaced(client.clone(), &ns),
        core(true),
        core(false),
    )
    .await;

    let event = |first: bool| {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
               "metadata": metadata("shop.2", Some(&ns), first),
               "eventTime": "2025-01-01T00:00:00.000001Z", "regarding": regarding, "reason": "Reconciled",
               "action": "Reconcile", "type": "Normal", "reportingController": "ota.dev/controller",
               "reportingInstance": "ota-controller-0", "note": if first { "first" } else { "second" }})
    };
    apply_twice(
        &Api::<EventsEvent>::namespaced(client, &ns),
        event(true),
        event(false),
    )
    .await;
}

#[tokio::test]
async fn kube_recorder_publishes_and_counts_a_repeated_event() {
    let client = client().await;
    let ns = unique_namespace("builtin-recorder");
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
    let account = accounts
        .patch(
            "server",
            &apply_params(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "server"}}),
            ),
        )
        .await
        .expect("a ServiceAccount to refer to");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ota.dev/controller".into(),
            instance: Some("ota-controller-0".into()),
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "BrokenReference".into(),
        note: Some("Channel production names Bundle 9.9.9, which does not exist".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = account.object_ref(&());
    recorder
        .publish(&event, &reference)
        .await
        .expect("the first event is created");
    recorder
        .publish(&event, &reference)
        .await
        .expect("the repeat patches its series");

    let events = Api::<EventsEvent>::namespaced(client, &ns)
        .list(&Default::default())
        .await
        .expect("events list");
    assert_eq!(
        events.items.len(),
        1,
        "a repeat is one event with a series: {events:?}"
    );
    let stored = &events.items[0];
    assert_eq!(stored.reason.as_deref(), Some("BrokenReference"));
    assert_eq!(stored.type_.as_deref(), Some("Warning"));
    assert_eq!(stored.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        stored.regarding.as_ref().and_then(|r| r.uid.clone()),
        account.metadata.uid
    );
}

#[tokio::test]
async fn a_watch_sees_applies_and_deletes_and_a_foreground_delete_completes() {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let client = client().await;
    let ns = unique_namespace("builtin-watch");
    let api = Api::<ConfigMap>::namespaced(client, &ns);
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("a watch event within 10 s")
            .expect("the watch goes on")
            .expect("a watch event, not an error")
    };
    // The first list is empty: the watch is established before the write.
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitDone));

    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"},
                        "data": {"a": "1"}});
    api.patch("watched", &apply_params(), &Patch::Apply(&config))
        .await
        .expect("the apply");
    match next().await {
        watcher::Event::Apply(seen) => assert_eq!(seen.data.unwrap()["a"], "1"),
        other => panic!("expected the applied object, got {other:?}"),
    }

    // No garbage collector runs, so no delete may wait for one.
    api.delete("watched", &kube::api::DeleteParams::foreground())
        .await
        .expect("a foreground delete");
    match next().await {
        watcher::Event::Delete(gone) => assert_eq!(gone.name_any(), "watched"),
        other => panic!("expected the deletion, got {other:?}"),
    }
    assert!(
        api.get_opt("watched").await.unwrap().is_none(),
        "the object is gone"
    );
}

#[tokio::test]
async fn owner_references_are_stored() {
    let client = client().await;
    let ns = unique_namespace("builtin-owner");
    let owner = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .patch(
            "owner",
            &apply_params(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "owner"}}),
            ),
        )
        .await
        .expect("the owner");
    let owner_ref = owner.controller_owner_ref(&()).expect("an owner reference");
    let child = ConfigMap {
        metadata: ObjectMeta {
            name: Some("child".into()),
            owner_references: Some(vec![owner_ref.clone()]),
            ..Default::default()
        },
        ..Default::default()
    };
    let configs = Api::<ConfigMap>::namespaced(client, &ns);
    configs
        .patch("child", &apply_params(), &Patch::Apply(&child))
        .await
        .expect("the child applies");
    let read = configs.get("child").await.expect("the child reads back");
    assert_eq!(read.owner_references(), [owner_ref]);
}

#[tokio::test]
async fn a_second_manager_conflicts_unless_forced_and_then_owns_the_field() {
    let client = client().await;
    let ns = unique_namespace("builtin-owners");
    let api = Api::<ConfigMap>::namespaced(client, &ns);
    let config = |value: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"},
               "data": {"owner": value}})
    };
    api.patch("shared", &apply_params(), &Patch::Apply(config("a")))
        .await
        .expect("the first manager applies");

    let conflict = api_error(
        api.patch("shared", &PatchParams::apply("other"), &Patch::Apply(config("b")))
            .await,
        "a second manager changing an owned field without force",
    );
    assert_eq!(conflict.code, 409, "{conflict:?}");
    assert!(
        conflict.message.contains(MANAGER) && conflict.message.contains(".data.owner"),
        "the conflict names the owner and the field: {}",
        conflict.message
    );
    assert_eq!(api.get("shared").await.unwrap().data.unwrap()["owner"], "a");

    // Agreeing on the value is no conflict: both managers then share the field.
    let shared = api
        .patch("shared", &PatchParams::apply("other"), &Patch::Apply(config("a")))
        .await
        .expect("applying the same value");
    assert_eq!(owned_fields(&shared, "other", "")["f:data"]["f:owner"], json!({}));
    assert_eq!(owned_fields(&shared, MANAGER, "")["f:data"]["f:owner"], json!({}));

    let forced = api
        .patch(
            "shared",
            &PatchParams::apply("other").force(),
            &Patch::Apply(config("b")),
        )
        .await
        .expect("a forced apply takes the field");
    assert_eq!(forced.data.as_ref().unwrap()["owner"], "b");
    assert!(
        owned_fields(&forced, MANAGER, "").get("f:data").is_none(),
        "the first manager lost the field: {:?}",
        forced.metadata.managed_fields
    );

    // The first manager applying without the field leaves it to its new owner.
    let after = api
        .patch(
            "shared",
            &apply_params(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}})),
        )
        .await
        .expect("an apply without the field");
    assert_eq!(after.data.unwrap()["owner"], "b");
}

#[tokio::test]
async fn two_managers_merge_list_items_by_key_not_replace_the_list() {
    let client = client().await;
    let ns = unique_namespace("builtin-merge");
    let api = Api::<Deployment>::namespaced(client, &ns);
    api.patch("server", &apply_params(), &Patch::Apply(deployment(&ns, true)))
        .await
        .expect("the main apply");
    // containers is a list keyed by name in the API's OpenAPI models: a second manager adding a
    // container adds one, where an atomic list would be replaced.
    let sidecar = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "server"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "sidecar", "image": "ghcr.io/example/sidecar:1"}
        ]}}}
    });
    let merged = api
        .patch(
            "server",
            &PatchParams::apply("sidecar-injector"),
            &Patch::Apply(&sidecar),
        )
        .await
        .expect("the second manager's apply");
    let pod = merged
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["server", "sidecar"]);
    assert_eq!(merged.metadata.generation, Some(2));
    let owned = owned_fields(&merged, "sidecar-injector", "");
    assert!(
        owned["f:spec"]["f:template"]["f:spec"]["f:containers"]
            .get(r#"k:{"name":"sidecar"}"#)
            .is_some(),
        "the second manager owns its container by key: {owned}"
    );
}

#[tokio::test]
async fn a_deployment_status_is_written_only_through_the_status_subresource() {
    let client = client().await;
    let ns = unique_namespace("builtin-status");
    let api = Api::<Deployment>::namespaced(client, &ns);
    let missing = api_error(
        api.patch_status(
            "server",
            &PatchParams::apply("ota-test-status").force(),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "status": {"replicas": 1}})),
        )
        .await,
        "a status write to a missing Deployment",
    );
    assert_eq!(
        missing.code, 404,
        "the status subresource never creates: {missing:?}"
    );

    // Status sent to the main endpoint is dropped: users do not write status.
    let mut with_status = deployment(&ns, true);
    with_status["status"] = json!({"replicas": 7, "readyReplicas": 7});
    let created = api
        .patch("server", &apply_params(), &Patch::Apply(&with_status))
        .await
        .expect("the main apply");
    assert_eq!(
        created.status.as_ref().and_then(|s| s.ready_replicas),
        None,
        "{:?}",
        created.status
    );
    assert!(owned_fields(&created, MANAGER, "").get("f:status").is_none());

    let status = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "spec": {"replicas": 9},
        "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                   "conditions": [{"type": "Available", "status": "True",
                                   "reason": "MinimumReplicasAvailable",
                                   "lastTransitionTime": "2025-01-01T00:00:00Z",
                                   "lastUpdateTime": "2025-01-01T00:00:00Z"}]}
    });
    let written = api
        .patch_status(
            "server",
            &PatchParams::apply("ota-test-status").force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("the status apply");
    let read = api.get("server").await.expect("the Deployment reads back");
    assert_eq!(written.metadata.resource_version, read.metadata.resource_version);
    let read_status = read.status.clone().expect("a status");
    assert_eq!(read_status.ready_replicas, Some(2));
    assert_eq!(read_status.observed_generation, Some(1));
    assert_eq!(read_status.conditions.expect("conditions")[0].type_, "Available");
    assert_eq!(
        read.spec.as_ref().unwrap().replicas,
        Some(2),
        "the status subresource ignores spec"
    );
    assert_eq!(
        read.metadata.generation,
        Some(1),
        "a status write is no spec change"
    );
    let status_entry = managed_entry(&read, "ota-test-status", "status").expect("a status entry");
    assert_eq!(status_entry.operation.as_deref(), Some("Apply"));
    assert!(owned_fields(&read, "ota-test-status", "status")["f:status"]["f:readyReplicas"].is_object());
    assert!(
        owned_fields(&read, "ota-test-status", "status")
            .get("f:spec")
            .is_none()
    );

    // A spec change through the main endpoint keeps the status and counts a generation.
    let updated = api
        .patch("server", &apply_params(), &Patch::Apply(deployment(&ns, false)))
        .await
        .expect("the changed main apply");
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(
        updated.status.and_then(|s| s.ready_replicas),
        Some(2),
        "status survives a spec apply"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_the_reason() {
    let client = client().await;
    let ns = unique_namespace("builtin-bad");

    // A Service name must be a DNS-1035 label.
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let invalid = api_error(
        services
            .patch(
                "1-server",
                &apply_params(),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1-server"}}),
                ),
            )
            .await,
        "a Service name starting with a digit",
    );
    assert_eq!(invalid.code, 422, "{invalid:?}");
    assert!(invalid.message.contains("metadata.name"), "{}", invalid.message);
    assert!(
        services.get_opt("1-server").await.unwrap().is_none(),
        "nothing was stored"
    );

    // A field the kind does not have: server-side apply checks the object against its schema.
    let configs = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let unknown = api_error(
        configs
            .patch(
                "server",
                &apply_params(),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "server"},
                                     "data": {"a": "b"}, "replicas": 3}),
                ),
            )
            .await,
        "a ConfigMap with a field ConfigMaps do not have",
    );
    // kube-apiserver answers this with a 500 today (kubernetes/kubernetes#122480, #139253), as
    // this server does: the same managed-fields code. Accept the 400 a fix would bring.
    assert!(
        [400, 422, 500].contains(&unknown.code),
        "an unknown field is refused: {unknown:?}"
    );
    assert!(
        unknown
            .message
            .contains(".replicas: field not declared in schema"),
        "the refusal names the field: {}",
        unknown.message
    );
    assert!(
        configs.get_opt("server").await.unwrap().is_none(),
        "nothing was stored"
    );

    // A wrongly typed field.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let mut wrong_type = deployment(&ns, true);
    wrong_type["spec"]["replicas"] = json!("two");
    let wrong = api_error(
        deployments
            .patch("server", &apply_params(), &Patch::Apply(&wrong_type))
            .await,
        "a Deployment with a string for replicas",
    );
    assert!([400, 422, 500].contains(&wrong.code), "{wrong:?}");
    assert!(
        wrong.message.contains("replicas"),
        "the refusal names the field: {}",
        wrong.message
    );
    assert!(
        deployments.get_opt("server").await.unwrap().is_none(),
        "nothing was stored"
    );

    // An object whose namespace differs from the request's.
    let mut elsewhere = deployment(&ns, true);
    elsewhere["metadata"]["namespace"] = json!("another-namespace");
    let mismatch = api_error(
        deployments
            .patch("server", &apply_params(), &Patch::Apply(&elsewhere))
            .await,
        "a Deployment whose namespace is not the request's",
    );
    assert_eq!(mismatch.code, 400, "{mismatch:?}");
}

#[tokio::test]
async fn discovery_lists_every_builtin_kind_with_its_scope_and_status() {
    let client = client().await;
    let discovery = Discovery::new(client).run().await.expect("discovery");
    let kinds = [
        ("", "v1", "Namespace", "namespaces", false, true),
        ("", "v1", "ServiceAccount", "serviceaccounts", true, false),
        ("", "v1", "ConfigMap", "configmaps", true, false),
        ("", "v1", "Secret", "secrets", true, false),
        ("", "v1", "Service", "services", true, true),
        ("", "v1", "Event", "events", true, false),
        ("apps", "v1", "Deployment", "deployments", true, true),
        (
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            true,
        ),
        (
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            true,
        ),
        ("networking.k8s.io", "v1", "Ingress", "ingresses", true, true),
        ("rbac.authorization.k8s.io", "v1", "Role", "roles", true, false),
        (
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            false,
        ),
        ("coordination.k8s.io", "v1", "Lease", "leases", true, false),
        ("events.k8s.io", "v1", "Event", "events", true, false),
    ];
    for (group, version, kind, plural, namespaced, has_status) in kinds {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{gvk:?} is not discovered"));
        assert_eq!(resource.plural, plural);
        let scope = if namespaced {
            Scope::Namespaced
        } else {
            Scope::Cluster
        };
        assert_eq!(capabilities.scope, scope, "{kind}");
        let status = capabilities
            .subresources
            .iter()
            .any(|(r, _)| r.plural == "status");
        assert_eq!(status, has_status, "{kind} status subresource");
    }
    // The CRDs are still served by the same server.
    assert!(
        discovery.groups().any(|g| g.name() == "apiextensions.k8s.io"),
        "the CRD API is discovered too"
    );
}
