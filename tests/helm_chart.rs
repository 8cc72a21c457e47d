//! The Helm chart's RBAC and controller flags, rendered by the real helm (installed into the
//! tools cache by `tests/helm/check.sh tools`, so this test needs no cluster): the controller
//! holds exactly the permissions it uses, cluster-wide or in the one watched namespace, plus the
//! Lease only with leader election. Schema validation of every rendered object is check.sh's job.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    networking::v1::Ingress,
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use ota_operator::{
    api::{App, Bundle, Channel, Rollout, constants::GROUP},
    core::app_children::{self, RenderSettings},
};
use support::helm::objects;

const RELEASE_NAMESPACE: &str = "ota-system";

/// (API group, resource) → verbs.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

/// The chart rendered with `values` (a file under tests/helm/values/) and `sets`.
fn render(values: &str, sets: &[&str]) -> Vec<serde_json::Value> {
    support::helm::render(RELEASE_NAMESPACE, values, sets)
}

fn grants(rules: &[PolicyRule]) -> Grants {
    let mut grants = Grants::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none(),
            "a controller rule limited by name: {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                grants
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    grants
}

fn verbs(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|verb| (*verb).to_owned()).collect()
}

fn built_in<K: k8s_openapi::Resource>() -> (String, String) {
    (K::GROUP.to_owned(), K::URL_PATH_SEGMENT.to_owned())
}

fn custom<K: kube::Resource<DynamicType = ()>>(subresource: &str) -> (String, String) {
    (GROUP.to_owned(), format!("{}{subresource}", K::plural(&())))
}

/// What the controller does, and so exactly what it must be allowed.
fn controller_needs() -> Grants {
    let mut needs = Grants::new();
    let ota_kinds = [
        custom::<App>,
        custom::<Channel>,
        custom::<Bundle>,
        custom::<Rollout>,
    ];
    for kind in ota_kinds {
        // Watched; status written.
        needs.insert(kind(""), verbs(&["list", "watch"]));
        needs.insert(kind("/status"), verbs(&["patch"]));
    }
    // A Bundle's finalizer added and removed with a patch.
    needs.insert(custom::<Bundle>(""), verbs(&["list", "watch", "patch"]));
    // Owner references with blockOwnerDeletion on every child of an App.
    needs.insert(custom::<App>("/finalizers"), verbs(&["update"]));
    // The update server's children: server-side applied (patch, create) and watched
    // (Controller::owns); garbage-collected with the App.
    let children = [
        built_in::<ServiceAccount>(),
        built_in::<ConfigMap>(),
        built_in::<Service>(),
        built_in::<Deployment>(),
        built_in::<Role>(),
        built_in::<RoleBinding>(),
    ];
    for child in children {
        needs.insert(child, verbs(&["list", "watch", "create", "patch"]));
    }
    // The optional children are also read by name and removed when the App stops asking for one.
    let optional_children = [
        built_in::<PodDisruptionBudget>(),
        built_in::<HorizontalPodAutoscaler>(),
        built_in::<Ingress>(),
    ];
    for child in optional_children {
        needs.insert(
            child,
            verbs(&["get", "list", "watch", "create", "patch", "delete"]),
        );
    }
    needs.insert(built_in::<Secret>(), verbs(&["get"]));
    needs.insert(
        built_in::<k8s_openapi::api::events::v1::Event>(),
        verbs(&["create", "patch"]),
    );
    needs
}

fn assert_grants_equal(actual: &Grants, expected: &Grants, what: &str) {
    let keys: BTreeSet<_> = actual.keys().chain(expected.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|key| actual.get(*key) != expected.get(*key))
        .map(|(group, resource)| {
            format!(
                "{group}/{resource}: granted {:?}, needed {:?}",
                actual.get(&(group.clone(), resource.clone())),
                expected.get(&(group.clone(), resource.clone()))
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{what} differs from what the controller needs:\n{}",
        differences.join("\n")
    );
}

fn controller_args(documents: &[serde_json::Value]) -> Vec<String> {
    let deployments: Vec<Deployment> = objects(documents, "Deployment");
    assert_eq!(deployments.len(), 1, "one controller Deployment");
    let spec = deployments[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    spec.containers[0].args.clone().expect("controller args")
}

#[test]
fn cluster_wide_by_default_with_exactly_the_needed_verbs() {
    let documents = render("default.yaml", &[]);
    let cluster_roles: Vec<ClusterRole> = objects(&documents, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole");
    let rules = cluster_roles[0].rules.as_deref().unwrap_or_default();
    assert_grants_equal(&grants(rules), &controller_needs(), "the ClusterRole");

    let bindings: Vec<ClusterRoleBinding> = objects(&documents, "ClusterRoleBinding");
    assert_eq!(bindings.len(), 1);
    assert_eq!(
        bindings[0].role_ref.name,
        cluster_roles[0].metadata.name.clone().unwrap()
    );
    let subjects = bindings[0].subjects.as_deref().unwrap_or_default();
    let accounts: Vec<ServiceAccount> = objects(&documents, "ServiceAccount");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), accounts[0].metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(RELEASE_NAMESPACE));

    // One replica: no Lease, no Role for it, and no --namespace (every namespace is watched).
    assert!(
        objects::<Role>(&documents, "Role").is_empty(),
        "no Role without leader election"
    );
    let args = controller_args(&documents);
    assert_eq!(args[0], "controller");
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--namespace") || a.starts_with("--leader-election")),
        "{args:?}"
    );
}

#[test]
fn one_watched_namespace_gets_a_role_there_and_nothing_cluster_wide() {
    let documents = render("single-namespace.yaml", &[]);
    assert!(objects::<ClusterRole>(&documents, "ClusterRole").is_empty());
    assert!(objects::<ClusterRoleBinding>(&documents, "ClusterRoleBinding").is_empty());
    // The values name an existing ServiceAccount, so none is created.
    assert!(objects::<ServiceAccount>(&documents, "ServiceAccount").is_empty());

    let roles: Vec<Role> = objects(&documents, "Role");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0].metadata.namespace.as_deref(), Some("mobile-apps"));
    assert_grants_equal(
        &grants(roles[0].rules.as_deref().unwrap_or_default()),
        &controller_needs(),
        "the Role",
    );
    let bindings: Vec<RoleBinding> = objects(&documents, "RoleBinding");
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].metadata.namespace.as_deref(), Some("mobile-apps"));
    let subject = &bindings[0].subjects.as_deref().unwrap_or_default()[0];
    assert_eq!(subject.name, "ota-controller");
    assert_eq!(subject.namespace.as_deref(), Some(RELEASE_NAMESPACE));
    assert!(controller_args(&documents).contains(&"--namespace=mobile-apps".to_owned()));
}

#[test]
fn two_replicas_elect_a_leader_on_one_lease_they_may_write() {
    let documents = render("ha.yaml", &[]);
    let args = controller_args(&documents);
    let lease_name = "ota-ota-operator-leader";
    for flag in [
        "--leader-election".to_owned(),
        format!("--lease-name={lease_name}"),
        format!("--lease-namespace={RELEASE_NAMESPACE}"),
    ] {
        assert!(args.contains(&flag), "{flag} missing from {args:?}");
    }

    let roles: Vec<Role> = objects(&documents, "Role");
    assert_eq!(
        roles.len(),
        1,
        "only the Lease Role besides the ClusterRole: {roles:?}"
    );
    assert_eq!(roles[0].metadata.namespace.as_deref(), Some(RELEASE_NAMESPACE));
    let lease = built_in::<Lease>();
    let mut by_name = BTreeMap::new();
    for rule in roles[0].rules.as_deref().unwrap_or_default() {
        assert_eq!(rule.api_groups.as_deref(), Some(&[lease.0.clone()][..]));
        assert_eq!(rule.resources.as_deref(), Some(&[lease.1.clone()][..]));
        by_name.insert(
            rule.resource_names.clone(),
            rule.verbs.iter().cloned().collect::<BTreeSet<_>>(),
        );
    }
    // create cannot be limited by name; everything else is limited to the one Lease.
    assert_eq!(
        by_name,
        BTreeMap::from([
            (None, verbs(&["create"])),
            (Some(vec![lease_name.to_owned()]), verbs(&["get", "patch"])),
        ])
    );
}

#[test]
fn leader_election_follows_the_replica_count_unless_set() {
    let one = controller_args(&render("default.yaml", &["leaderElection.enabled=true"]));
    assert!(one.contains(&"--leader-election".to_owned()), "{one:?}");
    let two = controller_args(&render("default.yaml", &["replicas=2"]));
    assert!(two.contains(&"--leader-election".to_owned()), "{two:?}");
}

/// The controller creates a Role for each update server; Kubernetes refuses a Role that grants
/// more than its creator holds, so the controller must hold everything an update server reads.
#[test]
fn the_controller_holds_what_it_grants_each_update_server() {
    let documents = render("default.yaml", &[]);
    let cluster_roles: Vec<ClusterRole> = objects(&documents, "ClusterRole");
    let held = grants(cluster_roles[0].rules.as_deref().unwrap_or_default());
    let app: App = serde_json::from_value(serde_json::json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "App",
        "metadata": {"name": "shop", "namespace": "apps", "uid": "0d8a4c5e-4b51-4f0c-9d7e-3f1f2a6b7c8d"},
        "spec": {"appId": "com.example.shop", "storage": {"filesystem": {"path": "bundles"}}}
    }))
    .expect("an App");
    let settings = RenderSettings {
        default_image: "ota:test".to_owned(),
    };
    let role = app_children::render(&app, &settings)
        .expect("the App renders")
        .role;
    let granted = grants(role.rules.as_deref().unwrap_or_default());
    assert!(!granted.is_empty(), "the update server's Role grants something");
    for (kind, verbs) in granted {
        let holds = held.get(&kind).cloned().unwrap_or_default();
        assert!(
            verbs.is_subset(&holds),
            "the controller cannot grant {verbs:?} on {kind:?}: it holds {holds:?}"
        );
    }
}

/// The real `ota` binary parses every flag the chart passes (clap checks each flag and value
/// before it answers `--help`), so a renamed flag fails here rather than in a cluster.
#[test]
fn the_ota_binary_accepts_every_flag_the_chart_passes() {
    let parses = |args: &[String]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ota"))
            .args(args)
            .arg("--help")
            .output()
            .expect("ota runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let value_sets: [(&str, &[&str]); 4] = [
        ("default.yaml", &[]),
        ("single-namespace.yaml", &[]),
        ("service-monitor.yaml", &[]),
        // ha.yaml passes a made-up extra flag to show extraArgs reach the container.
        ("ha.yaml", &["extraArgs=null"]),
    ];
    for (values, sets) in value_sets {
        let args = controller_args(&render(values, sets));
        let (ok, stderr) = parses(&args);
        assert!(
            ok,
            "ota refuses the flags the chart passes with {values}: {args:?}\n{stderr}"
        );
    }
    let mut unknown = controller_args(&render("default.yaml", &[]));
    unknown.push("--no-such-flag".to_owned());
    let (ok, stderr) = parses(&unknown);
    assert!(
        !ok && stderr.contains("--no-such-flag"),
        "an unknown flag must be refused: {stderr}"
    );
}

/// The opt-in NetworkPolicy: off by default; on, one per App namespace over every update server
/// the controller deploys there (selected by the labels `core::app_children` gives their pods),
/// the public port open, the internal port only to the controller's pods and the extra peers.
#[test]
fn the_network_policy_lets_only_the_controller_reach_the_internal_port() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    assert!(objects::<NetworkPolicy>(&render("default.yaml", &[]), "NetworkPolicy").is_empty());
    let one = render("single-namespace.yaml", &["networkPolicy.enabled=true"]);
    let in_watched: Vec<NetworkPolicy> = objects(&one, "NetworkPolicy");
    assert_eq!(in_watched.len(), 1);
    assert_eq!(in_watched[0].metadata.namespace.as_deref(), Some("mobile-apps"));

    let documents = render("network-policy.yaml", &[]);
    let policies: Vec<NetworkPolicy> = objects(&documents, "NetworkPolicy");
    let namespaces: Vec<_> = policies
        .iter()
        .map(|p| p.metadata.namespace.clone().unwrap_or_default())
        .collect();
    assert_eq!(namespaces, ["mobile-apps", "games"]);

    // What the controller deploys for an App, and the controller's own pods.
    let app: App = serde_json::from_value(serde_json::json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "App",
        "metadata": {"name": "shop", "namespace": "games", "uid": "0d8a4c5e-4b51-4f0c-9d7e-3f1f2a6b7c8d"},
        "spec": {"appId": "com.example.shop", "storage": {"filesystem": {"path": "bundles"}}}
    }))
    .expect("an App");
    let children = app_children::render(
        &app,
        &RenderSettings {
            default_image: "ota:test".to_owned(),
        },
    )
    .expect("the App renders");
    let server_pod = children.deployment.spec.expect("a spec").template;
    let server_labels = server_pod
        .metadata
        .expect("pod metadata")
        .labels
        .expect("pod labels");
    let ports: BTreeMap<String, i32> = server_pod.spec.expect("a pod spec").containers[0]
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([
            (app_children::PORT_NAME.to_owned(), app_children::SERVER_PORT),
            (
                app_children::INTERNAL_PORT_NAME.to_owned(),
                app_children::INTERNAL_PORT
            ),
        ]),
        "the update server's ports, which the policy names"
    );
    let controller_deployment: Vec<Deployment> = objects(&documents, "Deployment");
    let controller_labels = controller_deployment[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("the controller's pod labels");
    let selects = |selector: &Option<BTreeMap<String, String>>, labels: &BTreeMap<String, String>| {
        let selector = selector.clone().unwrap_or_default();
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };

    for policy in &policies {
        let spec = policy.spec.as_ref().expect("a spec");
        assert!(
            selects(
                &spec.pod_selector.as_ref().and_then(|s| s.match_labels.clone()),
                &server_labels
            ),
            "the policy selects the update-server pods: {:?}",
            spec.pod_selector
        );
        assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
        let rules = spec.ingress.clone().unwrap_or_default();
        let port_names = |rule: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| -> Vec<String> {
            rule.ports
                .iter()
                .flatten()
                .map(|p| match p.port.clone() {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => name,
                    other => panic!("a port named as the pods name it, not {other:?}"),
                })
                .collect()
        };
        let public: Vec<_> = rules
            .iter()
            .filter(|r| port_names(r) == [app_children::PORT_NAME])
            .collect();
        assert_eq!(public.len(), 1, "{rules:?}");
        assert!(
            public[0].from.is_none(),
            "the public port is open to devices anywhere"
        );
        let internal: Vec<_> = rules
            .iter()
            .filter(|r| port_names(r) == [app_children::INTERNAL_PORT_NAME])
            .collect();
        assert_eq!(internal.len(), 1, "{rules:?}");
        assert_eq!(rules.len(), 2, "no other port is open: {rules:?}");
        let peers = internal[0].from.clone().expect("the internal port has peers");
        let controller_peer = &peers[0];
        assert_eq!(
            controller_peer
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                RELEASE_NAMESPACE.to_owned()
            )])),
            "the controller's namespace"
        );
        assert!(
            selects(
                &controller_peer
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone()),
                &controller_labels
            ),
            "the controller's pods"
        );
        assert!(
            !selects(
                &controller_peer
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone()),
                &server_labels
            ),
            "not the update servers themselves"
        );
        assert_eq!(
            peers.len(),
            2,
            "the controller and the one extra peer the values add"
        );
    }
}
