//! Least privilege, proven on the real test API server (tests/apiserver/apiserver.sh): the
//! controller and an App's update server run in this process, each through its own recording
//! proxy (tests/support/recording_proxy.rs), while they do their real work: an App's children
//! rendered, three Bundles synced into filesystem storage, a Channel, a Rollout moving a step,
//! waiting for and taking a promotion that the Channel records, leader election on a Lease,
//! Events and a webhook delivery, a Bundle deleted through its finalizer, and devices answered by
//! the update server. Then every request each made is checked against the rules it runs with in
//! a cluster:
//!
//! - the controller's against the chart's ClusterRole (and, with `watchNamespace`, its Role) and
//!   the leader-election Role, rendered by the real helm;
//! - the update server's against the Role the controller renders for its App
//!   (`core::app_children`), which must also be the Role the controller created.
//!
//! Every request must be allowed, and every verb a rule grants must be used by some request,
//! unless the rule's comment in the chart names it after `Not requested in
//! tests/least_privilege.rs:` with the reason in parentheses. Run with
//! `tests/run.sh --test least_privilege`.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::SocketAddr,
    path::Path,
    sync::Arc,
};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::Secret,
    events::v1::Event,
    rbac::v1::{PolicyRule, Role},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use ota_operator::{
    api::{App, Bundle, Channel, Rollout, constants::annotation, rollout::RolloutPhase},
    core::app_children::{self, RenderSettings},
    server::{self, StorageSetup, kube_source::KubeSourceOptions},
    storage::Credentials,
};
use serde_json::{Value, json};
use support::{
    controller::{IMAGE, eventually, options, start},
    recording_proxy::{ApiRequest, RecordingProxy},
    *,
};

const APP_ID: &str = "com.example.shop";
const LEASE: &str = "ota-operator";
/// What a rule's comment says before the verbs no request of this test uses.
const UNREQUESTED: &str = "Not requested in tests/least_privilege.rs:";

// ---------------------------------------------------------------------------------------------
// RBAC rules and the requests they allow

/// One rule of a Role or ClusterRole, where it applies, and the comment above it in the chart.
#[derive(Debug, Clone)]
struct Rule {
    /// "ClusterRole ota-ota-operator, rule 3".
    origin: String,
    rule: PolicyRule,
    /// The namespace of a Role; None for a ClusterRole bound cluster-wide.
    namespace: Option<String>,
    comment: String,
}

fn listed(list: &[String], value: &str) -> bool {
    list.iter().any(|item| item == "*" || item == value)
}

impl Rule {
    /// Whether this rule allows `verb` on what `request` asks for.
    fn allows(&self, request: &ApiRequest, verb: &str) -> bool {
        if request.non_resource {
            return false;
        }
        if let Some(namespace) = &self.namespace
            && request.namespace.as_ref() != Some(namespace)
        {
            return false;
        }
        let names_ok = match &self.rule.resource_names {
            None => true,
            Some(names) if names.is_empty() => true,
            Some(names) => request.name.as_ref().is_some_and(|name| names.contains(name)),
        };
        names_ok
            && listed(
                self.rule.api_groups.as_deref().unwrap_or_default(),
                &request.group,
            )
            && listed(
                self.rule.resources.as_deref().unwrap_or_default(),
                &request.rbac_resource(),
            )
            && listed(&self.rule.verbs, verb)
    }

    /// The verbs the comment says no request of this test uses, each with a reason.
    fn unrequested_verbs(&self) -> BTreeSet<String> {
        let Some((_, after)) = self.comment.split_once(UNREQUESTED) else {
            return BTreeSet::new();
        };
        let Some((verbs, rest)) = after.split_once('(') else {
            return BTreeSet::new();
        };
        let reason = rest.split_once(')').map_or("", |(reason, _)| reason.trim());
        if reason.split_whitespace().count() < 4 {
            return BTreeSet::new(); // a reason of a word or two explains nothing
        }
        verbs
            .split([',', ' '])
            .filter(|verb| !verb.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// The rules of a rendered Role or ClusterRole with the comment block that precedes each in the
/// YAML helm printed (a block applies to every rule below it until the next one).
fn rules_of(stream: &str, kind: &str, name: &str, namespace: Option<&str>) -> Vec<Rule> {
    let document = stream
        .split("\n---\n")
        .find(|doc| {
            doc.lines().any(|l| l == format!("kind: {kind}"))
                && doc.lines().any(|l| l == format!("  name: {name}"))
        })
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"));
    let mut comments = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let mut in_block = false;
    for line in document.lines() {
        let trimmed = line.trim_start();
        if let Some(text) = trimmed.strip_prefix('#') {
            if trimmed.starts_with("# Source:") {
                continue;
            }
            if !in_block {
                block.clear();
            }
            block.push(text.trim());
            in_block = true;
            continue;
        }
        in_block = false;
        if trimmed.starts_with("- apiGroups:") {
            comments.push(block.join(" "));
        }
    }
    let parsed = support::helm::documents(document);
    let rules: Vec<PolicyRule> = serde_json::from_value(parsed[0]["rules"].clone()).expect("rules");
    assert_eq!(
        rules.len(),
        comments.len(),
        "every rule of {kind} {name} is a `- apiGroups:` item"
    );
    rules
        .into_iter()
        .zip(comments)
        .enumerate()
        .map(|(index, (rule, comment))| Rule {
            origin: format!("{kind} {name}, rule {}", index + 1),
            rule,
            namespace: namespace.map(str::to_owned),
            comment,
        })
        .collect()
}

/// Every request some rule does not allow (each verb the API server authorizes it for).
fn refused(requests: &[ApiRequest], rules: &[Rule]) -> Vec<String> {
    let mut refused = BTreeSet::new();
    for request in requests {
        for verb in request.authorized_verbs() {
            if !rules.iter().any(|rule| rule.allows(request, verb)) {
                refused.insert(format!("{request} needs {verb}"));
            }
        }
    }
    refused.into_iter().collect()
}

/// Each (rule, resource, verb) no request used, described, minus the verbs its comment names
/// with a reason; and the verbs a comment names that some request did use (a stale comment).
fn unused(requests: &[ApiRequest], rules: &[Rule]) -> (Vec<String>, Vec<String>) {
    let mut used: BTreeSet<(usize, String, String)> = BTreeSet::new();
    for request in requests {
        for verb in request.authorized_verbs() {
            for (index, rule) in rules.iter().enumerate() {
                if rule.allows(request, verb) {
                    used.insert((index, request.rbac_resource(), verb.to_owned()));
                }
            }
        }
    }
    let mut unexplained = Vec::new();
    let mut stale = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let said_unrequested = rule.unrequested_verbs();
        let resources = rule.rule.resources.clone().unwrap_or_default();
        for verb in &rule.rule.verbs {
            let unused_on: Vec<&String> = resources
                .iter()
                .filter(|resource| !used.contains(&(index, (*resource).clone(), verb.clone())))
                .collect();
            if !unused_on.is_empty() && !said_unrequested.contains(verb) {
                unexplained.push(format!(
                    "{}: {verb} on {unused_on:?} ({:?}) is used by no request, and the rule's comment does \
                     not say why ({UNREQUESTED} {verb} (<why>))",
                    rule.origin, rule.rule.api_groups
                ));
            }
            if unused_on.len() < resources.len() && said_unrequested.contains(verb) {
                stale.push(format!(
                    "{}: the comment says {verb} is not requested, but a request used it",
                    rule.origin
                ));
            }
        }
    }
    (unexplained, stale)
}

// ---------------------------------------------------------------------------------------------
// The world the controller and the update server work on

/// A zip of one index.html saying `version`.
fn bundle_zip(version: &str) -> Vec<u8> {
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buffer);
        let options = zip::write::SimpleFileOptions::default().last_modified_time(zip::DateTime::default());
        zip.start_file("index.html", options).expect("a zip entry");
        write!(zip, "<!doctype html><title>shop {version}</title>").expect("zip writes to memory");
        zip.finish().expect("a finished zip");
    }
    buffer.into_inner()
}

async fn apply(client: &Client, namespace: &str, document: Value) {
    let (kind, name) = kind_and_name(&document);
    apply_document(client, namespace, &document)
        .await
        .unwrap_or_else(|e| panic!("{kind} {name} was refused: {e}"));
}

/// A webhook receiver on 127.0.0.1 that answers every delivery 200; returns its URL.
async fn webhook_sink() -> String {
    let router = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}/hook")
}

/// The update server of App `shop` in this process, as `ota server --namespace <ns> --app shop
/// --internal-listen ...` runs it in its pod, reading the cluster through `client`. Returns the
/// devices' base URL, the internal listener's address and the watch task.
async fn update_server(
    client: Client,
    namespace: &str,
    folder: &Path,
    storage_root: &Path,
) -> (String, SocketAddr, tokio::task::JoinHandle<()>) {
    let database = format!("sqlite://{}", folder.join("devices.db").display());
    let storage = StorageSetup {
        base_dir: storage_root.to_owned(),
        credentials: Credentials::default(),
    };
    let mut boot = server::boot(&database, "127.0.0.1:0".parse().unwrap(), None, storage)
        .await
        .expect("the update server boots");
    let internal = boot
        .bind_internal("127.0.0.1:0".parse().unwrap())
        .await
        .expect("the internal listener binds");
    let base = format!("http://{}", boot.address);
    let source = KubeSourceOptions {
        namespace: Some(namespace.to_owned()),
        app: Some("shop".to_owned()),
    };
    let watch = tokio::spawn(server::kube_source::run(client, source, Arc::clone(&boot.state)));
    tokio::spawn(server::serve_until(boot, std::future::pending()));
    (base, internal, watch)
}

/// The App `shop` with filesystem storage under the shared root and `server` as its server.
fn app(server: Value) -> Value {
    json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "App", "metadata": {"name": "shop"},
        "spec": {"appId": APP_ID, "storage": {"filesystem": {"path": "bundles"}}, "server": server}
    })
}

/// Whether the App's optional child of kind `K` exists.
async fn exists<K>(client: &Client, namespace: &str) -> bool
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(&app_children::child_name("shop"))
        .await
        .expect("a read")
        .is_some()
}

/// The App asks for two replicas on PostgreSQL with an Ingress (a PodDisruptionBudget and the
/// Ingress appear), then for an autoscaler instead (the autoscaler appears, the other two are
/// removed), then for neither (the autoscaler is removed): every optional child is created,
/// changed and deleted by the controller.
async fn optional_children_come_and_go(client: &Client, namespace: &str) {
    use k8s_openapi::api::{
        autoscaling::v2::HorizontalPodAutoscaler, networking::v1::Ingress, policy::v1::PodDisruptionBudget,
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            "shop-pg",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-pg"},
                "stringData": {"url": "postgres://ota:secret@db:5432/ota"}
            })),
        )
        .await
        .expect("the database Secret is created");
    let mut several = app(json!({"replicas": 2, "ingress": {"host": "shop.example.com"}}));
    several["spec"]["deviceStore"] = json!({"postgres": {"urlSecretRef": {"name": "shop-pg"}}});
    apply(client, namespace, several).await;
    eventually(30, "a PodDisruptionBudget and an Ingress appear", || async {
        (exists::<PodDisruptionBudget>(client, namespace).await && exists::<Ingress>(client, namespace).await)
            .then_some(())
    })
    .await;
    // The ingress host changes: the controller patches the Ingress it created.
    let mut moved = app(json!({"replicas": 2, "ingress": {"host": "updates.example.com"}}));
    moved["spec"]["deviceStore"] = json!({"postgres": {"urlSecretRef": {"name": "shop-pg"}}});
    apply(client, namespace, moved).await;
    eventually(30, "the Ingress follows the App", || async {
        let ingress = Api::<Ingress>::namespaced(client.clone(), namespace)
            .get(&app_children::child_name("shop"))
            .await
            .ok()?;
        let host = ingress.spec?.rules?.first()?.host.clone()?;
        (host == "updates.example.com").then_some(())
    })
    .await;
    apply(
        client,
        namespace,
        app(json!({"replicas": 1, "autoscaling": {"minReplicas": 1, "maxReplicas": 1}})),
    )
    .await;
    eventually(30, "the autoscaler replaces them", || async {
        (exists::<HorizontalPodAutoscaler>(client, namespace).await
            && !exists::<PodDisruptionBudget>(client, namespace).await
            && !exists::<Ingress>(client, namespace).await)
            .then_some(())
    })
    .await;
    apply(
        client,
        namespace,
        app(json!({"replicas": 1, "autoscaling": {"minReplicas": 1, "maxReplicas": 1, "targetCpuUtilizationPercent": 60}})),
    )
    .await;
    eventually(30, "the autoscaler follows the App", || async {
        let autoscaler = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), namespace)
            .get(&app_children::child_name("shop"))
            .await
            .ok()?;
        let metrics = autoscaler.spec?.metrics?;
        let target = metrics.first()?.resource.as_ref()?.target.average_utilization?;
        (target == 60).then_some(())
    })
    .await;
    apply(client, namespace, app(json!({"replicas": 1}))).await;
    eventually(30, "the autoscaler is removed", || async {
        (!exists::<HorizontalPodAutoscaler>(client, namespace).await).then_some(())
    })
    .await;
}

fn condition_is(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[tokio::test]
async fn every_request_of_the_controller_and_the_update_server_is_allowed_and_every_grant_used() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("least-privilege");
    let work = tempfile::tempdir().expect("a temporary folder");
    let storage_root = work.path().join("storage");
    let uploads = storage_root.join("bundles/uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let mut sha = BTreeMap::new();
    for version in ["3.9.0", "4.0.0", "4.1.0"] {
        let zip = bundle_zip(version);
        sha.insert(version, sha256(&zip));
        std::fs::write(uploads.join(format!("{version}.zip")), zip).unwrap();
    }

    // The App (filesystem storage under the shared root), three Bundles, a Channel, a webhook
    // Secret and a Rollout that waits for a promotion at 50%.
    apply(&client, &namespace, app(json!({"replicas": 1}))).await;
    for (name, version) in [
        ("shop-3.9", "3.9.0"),
        ("shop-4.0", "4.0.0"),
        ("shop-4.1", "4.1.0"),
    ] {
        apply(
            &client,
            &namespace,
            json!({
                "apiVersion": "ota.dev/v1alpha1", "kind": "Bundle", "metadata": {"name": name},
                "spec": {"appRef": "shop", "version": version,
                         "source": {"storageKey": format!("uploads/{version}.zip"), "sha256": sha[version]}}
            }),
        )
        .await;
    }
    apply(
        &client,
        &namespace,
        json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Channel", "metadata": {"name": "production"},
            "spec": {"appRef": "shop", "bundleRef": "shop-4.0", "public": true}
        }),
    )
    .await;
    let hook = webhook_sink().await;
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(
            "hooks",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hooks"},
                "stringData": {"url": hook, "signingKey": "the receiver's shared secret"}
            })),
        )
        .await
        .expect("the webhook Secret is created");
    apply(
        &client,
        &namespace,
        json!({
            "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "to-4.1"},
            "spec": {"channelRef": "production", "bundleRef": "shop-4.1",
                     "steps": [{"setPercent": 50}, {"pause": {}}, {"setPercent": 100}],
                     "notifications": {"webhook": {"secretRef": {"name": "hooks"}}}}
        }),
    )
    .await;

    // The update server and the controller, each through a recording proxy.
    let server_proxy = RecordingProxy::start(client.clone()).await;
    let controller_proxy = RecordingProxy::start(client.clone()).await;
    let (base, internal, server_watch) =
        update_server(server_proxy.client(), &namespace, work.path(), &storage_root).await;
    let mut controller_options = options(&namespace, true, "least-privilege");
    controller_options.lease_name = LEASE.to_owned();
    controller_options.storage_dir = storage_root.clone();
    controller_options.figures_url_template = format!("http://{internal}");
    let controller = start(&controller_proxy.client(), controller_options).await;

    // The App's children, the Lease, the synced Bundles.
    let roles: Api<Role> = Api::namespaced(client.clone(), &namespace);
    let created_role = eventually(60, "the update server's Role is created", || async {
        roles
            .get_opt(&app_children::child_name("shop"))
            .await
            .expect("a read")
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    eventually(30, "the controller holds the Lease", || async {
        let lease = leases.get_opt(LEASE).await.expect("a read")?;
        (lease.spec?.holder_identity.as_deref() == Some("least-privilege")).then_some(())
    })
    .await;
    optional_children_come_and_go(&client, &namespace).await;
    let bundles: Api<Bundle> = Api::namespaced(client.clone(), &namespace);
    for name in ["shop-3.9", "shop-4.0", "shop-4.1"] {
        eventually(60, &format!("{name} is synced"), || async {
            let bundle = bundles.get(name).await.expect("the Bundle");
            condition_is(&bundle.status?.conditions, "Synced").then_some(())
        })
        .await;
    }

    // The Rollout takes its first step and waits; a promotion moves it to completion, and the
    // Channel records the candidate as its stable bundle.
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &namespace);
    eventually(60, "the Rollout waits for promotion at 50%", || async {
        let status = rollouts.get("to-4.1").await.expect("the Rollout").status?;
        (status.current_percent == Some(50)
            && status
                .pause_conditions
                .iter()
                .any(|p| p.reason == "WaitingForPromotion"))
        .then_some(())
    })
    .await;
    let promote = json!({"metadata": {"annotations": {annotation::PROMOTE: "2026-11-27T00:00:00Z"}}});
    rollouts
        .patch("to-4.1", &PatchParams::default(), &Patch::Merge(&promote))
        .await
        .expect("the promotion is written");
    eventually(60, "the Rollout completes", || async {
        let status = rollouts.get("to-4.1").await.expect("the Rollout").status?;
        (status.phase == Some(RolloutPhase::Completed)).then_some(())
    })
    .await;
    let channels: Api<Channel> = Api::namespaced(client.clone(), &namespace);
    eventually(30, "the Channel records its promotion", || async {
        let status = channels.get("production").await.expect("the Channel").status?;
        (status.promoted?.bundle == "shop-4.1").then_some(())
    })
    .await;

    // The update server serves what the cluster says, read through its proxy.
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/plugin/updates-8.51.14-android.json"))
            .unwrap(),
    )
    .unwrap();
    let mut check = fixture["body"].clone();
    check.as_object_mut().unwrap().remove("key_id");
    let http = reqwest::Client::new();
    eventually(30, "the update server offers 4.1.0", || async {
        let answer: Value = http
            .post(format!("{base}/updates"))
            .json(&check)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (answer["version"] == "4.1.0").then_some(())
    })
    .await;

    // An unused Bundle deleted: its finalizer cleans its storage and lets it go.
    bundles
        .delete("shop-3.9", &DeleteParams::default())
        .await
        .expect("the delete is accepted");
    eventually(60, "shop-3.9 is gone", || async {
        bundles
            .get_opt("shop-3.9")
            .await
            .expect("a read")
            .is_none()
            .then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let reasons: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .expect("the Events")
        .items
        .into_iter()
        .filter_map(|event| event.reason)
        .collect();
    assert!(reasons.contains("StorageCleaned"), "{reasons:?}");
    controller.stop().await;
    server_watch.abort();

    let controller_requests = controller_proxy.requests();
    let server_requests = server_proxy.requests();
    check_controller(&controller_requests, &namespace);
    check_update_server(&client, &server_requests, &namespace, &created_role).await;
}

/// The controller's requests against the chart rendered for a release in `namespace` with the
/// Lease the controller used, cluster-wide and with `watchNamespace`.
fn check_controller(requests: &[ApiRequest], namespace: &str) {
    assert!(
        requests.iter().all(|r| !r.non_resource),
        "the controller made non-resource requests: {:?}",
        requests.iter().filter(|r| r.non_resource).collect::<Vec<_>>()
    );
    let lease_sets = [
        "leaderElection.enabled=true".to_owned(),
        format!("leaderElection.leaseName={LEASE}"),
    ];
    let lease_rules = |stream: &str| {
        rules_of(
            stream,
            "Role",
            "ota-ota-operator-leader-election",
            Some(namespace),
        )
    };

    let cluster_wide_sets: Vec<&str> = lease_sets.iter().map(String::as_str).collect();
    let stream = support::helm::render_text(namespace, "default.yaml", &cluster_wide_sets);
    let mut rules = rules_of(&stream, "ClusterRole", "ota-ota-operator", None);
    rules.extend(lease_rules(&stream));
    let refusals = refused(requests, &rules);
    assert!(
        refusals.is_empty(),
        "the chart's ClusterRole and Lease Role refuse requests the controller made:\n{}",
        refusals.join("\n")
    );
    let (unexplained, stale) = unused(requests, &rules);
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "the chart grants the controller what it did not use:\n{}\n{}\nrequests:\n{}",
        unexplained.join("\n"),
        stale.join("\n"),
        describe(requests)
    );

    let watch_namespace = format!("watchNamespace={namespace}");
    let mut one_namespace_sets = cluster_wide_sets.clone();
    one_namespace_sets.push(&watch_namespace);
    let stream = support::helm::render_text(namespace, "default.yaml", &one_namespace_sets);
    let mut rules = rules_of(&stream, "Role", "ota-ota-operator", Some(namespace));
    rules.extend(lease_rules(&stream));
    let refusals = refused(requests, &rules);
    assert!(
        refusals.is_empty(),
        "with watchNamespace, the chart's Roles refuse requests the controller made:\n{}",
        refusals.join("\n")
    );
}

/// The update server's requests against the Role `core::app_children` renders for the App, which
/// must be the one the controller created.
async fn check_update_server(client: &Client, requests: &[ApiRequest], namespace: &str, created: &Role) {
    assert!(
        !requests.is_empty(),
        "the update server made no request through its proxy"
    );
    let app = Api::<App>::namespaced(client.clone(), namespace)
        .get("shop")
        .await
        .expect("the App");
    let settings = RenderSettings {
        default_image: IMAGE.to_owned(),
    };
    let rendered = app_children::render(&app, &settings)
        .expect("the App renders")
        .role;
    assert_eq!(
        rendered.rules, created.rules,
        "the controller created the Role core::app_children renders"
    );
    let rules: Vec<Rule> = rendered
        .rules
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, rule)| Rule {
            origin: format!("the update server's Role, rule {}", index + 1),
            rule,
            namespace: Some(namespace.to_owned()),
            // A Rust struct has no YAML comment: every verb it grants must be used.
            comment: String::new(),
        })
        .collect();
    let refusals = refused(requests, &rules);
    assert!(
        refusals.is_empty(),
        "the update server's Role refuses requests it made:\n{}",
        refusals.join("\n")
    );
    let (unexplained, _) = unused(requests, &rules);
    assert!(
        unexplained.is_empty(),
        "the update server's Role grants what it did not use:\n{}\nrequests:\n{}",
        unexplained.join("\n"),
        describe(requests)
    );
}

/// Each distinct request, with how often it was made.
fn describe(requests: &[ApiRequest]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests {
        let group = if request.group.is_empty() {
            "core"
        } else {
            &request.group
        };
        let key = format!(
            "{} {group}/{}{}",
            request.authorized_verbs().join("+"),
            request.rbac_resource(),
            request
                .name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(key, count)| format!("  {count:>4} × {key}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The proxy's reading of requests and the rule matching, on known paths

#[test]
fn requests_are_read_as_rbac_reads_them() {
    use hyper::Method;
    let parse = |method: Method, path: &str, query: &str, status: u16| {
        ApiRequest::parse(&method, path, query, status)
    };
    let list = parse(
        Method::GET,
        "/apis/ota.dev/v1alpha1/namespaces/ns/bundles",
        "",
        200,
    );
    assert_eq!(
        (list.verb.as_str(), list.group.as_str(), list.resource.as_str()),
        ("list", "ota.dev", "bundles")
    );
    assert_eq!(list.namespace.as_deref(), Some("ns"));
    let watch = parse(
        Method::GET,
        "/apis/ota.dev/v1alpha1/bundles",
        "watch=true&resourceVersion=1",
        200,
    );
    assert_eq!((watch.verb.as_str(), watch.namespace.as_deref()), ("watch", None));
    let get = parse(Method::GET, "/api/v1/namespaces/ns/secrets/hooks", "", 404);
    assert_eq!(
        (get.verb.as_str(), get.group.as_str(), get.name.as_deref()),
        ("get", "", Some("hooks"))
    );
    let status = parse(
        Method::PATCH,
        "/apis/ota.dev/v1alpha1/namespaces/ns/apps/shop/status",
        "",
        200,
    );
    assert_eq!(status.rbac_resource(), "apps/status");
    assert_eq!(status.authorized_verbs(), ["patch"]);
    let applied_new = parse(
        Method::PATCH,
        "/apis/apps/v1/namespaces/ns/deployments/ota-shop",
        "fieldManager=x",
        201,
    );
    assert_eq!(applied_new.authorized_verbs(), ["patch", "create"]);
    let delete_all = parse(Method::DELETE, "/api/v1/namespaces/ns/configmaps", "", 200);
    assert_eq!(delete_all.verb, "deletecollection");
    assert_eq!(
        parse(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
            "",
            200
        )
        .verb,
        "update"
    );
    assert_eq!(
        parse(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/ns/events",
            "",
            201
        )
        .verb,
        "create"
    );
    assert!(parse(Method::GET, "/apis/ota.dev/v1alpha1", "", 200).non_resource);
    assert!(parse(Method::GET, "/version", "", 200).non_resource);

    let rule =
        |groups: &[&str], resources: &[&str], verbs: &[&str], names: Option<&[&str]>, ns: Option<&str>| {
            Rule {
                origin: "test".to_owned(),
                rule: PolicyRule {
                    api_groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
                    resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
                    verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
                    resource_names: names.map(|n| n.iter().map(|x| (*x).to_owned()).collect()),
                    non_resource_urls: None,
                },
                namespace: ns.map(str::to_owned),
                comment: format!("{UNREQUESTED} delete (when an App turns its Ingress off)"),
            }
        };
    let bundles = rule(&["ota.dev"], &["bundles"], &["list", "watch"], None, Some("ns"));
    assert!(bundles.allows(&list, "list"));
    assert!(!bundles.allows(&list, "get"), "another verb");
    assert!(
        !bundles.allows(&watch, "watch"),
        "a Role does not allow a cluster-wide watch"
    );
    assert!(
        !bundles.allows(&status, "patch"),
        "a subresource is a resource of its own"
    );
    let lease = rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "patch"],
        Some(&["l"]),
        Some("ns"),
    );
    let other_lease = parse(
        Method::GET,
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases/m",
        "",
        200,
    );
    assert!(
        !lease.allows(&other_lease, "get"),
        "resourceNames limit the names"
    );
    assert_eq!(bundles.unrequested_verbs(), BTreeSet::from(["delete".to_owned()]));
    let mut vague = bundles.clone();
    vague.comment = format!("{UNREQUESTED} delete (because)");
    assert!(vague.unrequested_verbs().is_empty(), "a reason must explain");
    let (unexplained, _) = unused(&[list], &[bundles]);
    assert_eq!(
        unexplained.len(),
        1,
        "watch is unused and unexplained: {unexplained:?}"
    );
}
