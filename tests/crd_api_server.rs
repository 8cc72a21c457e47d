//! The CRDs, the examples and the invalid examples against a real Kubernetes API server
//! (upstream apiextensions-apiserver with etcd, started by tests/apiserver/apiserver.sh).

mod support;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
};
use ota_operator::api::{
    App, Bundle, Channel, Rollout,
    bundle::{BundleStatus, BundleStorageLocation},
    channel::{ChannelStatus, ServedBundle},
    constants::{condition, field_manager, reason},
    rollout::{
        AnalysisFigures, MeasurementPhase, MetricMeasurement, MetricPhase, MetricStatus, PauseCondition,
        RolloutPhase, RolloutStatus,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use support::*;

#[tokio::test]
async fn every_crd_is_accepted_and_becomes_established() {
    let client = client().await;
    let installed = install_crds(&client).await;
    assert_eq!(
        installed,
        [
            "apps.ota.dev",
            "bundles.ota.dev",
            "channels.ota.dev",
            "rollouts.ota.dev"
        ],
        "crds/ should hold exactly the four kinds"
    );
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for name in installed {
        let crd = api.get(&name).await.expect("the CRD reads back");
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["NamesAccepted", "Established"] {
            assert!(
                conditions.iter().any(|c| c.type_ == wanted && c.status == "True"),
                "{name} is not {wanted}: {conditions:?}"
            );
        }
    }
}

/// The typed round trip: what the server returns deserializes into the Rust type and
/// serializes back to the same spec, so the types model every field the schema defaults.
fn typed_round_trip<K: Resource + DeserializeOwned + Serialize>(
    object: &serde_json::Value,
) -> Result<(), String> {
    let typed: K =
        serde_json::from_value(object.clone()).map_err(|e| format!("does not deserialize: {e}"))?;
    let back = serde_json::to_value(&typed).expect("a typed object serializes");
    contains_all(&object["spec"], &back["spec"], "spec")?;
    contains_all(&back["spec"], &object["spec"], "spec")
}

#[tokio::test]
async fn every_example_applies_with_server_side_apply_and_reads_back_unchanged() {
    let client = client_with_crds().await;
    let files = yaml_files("examples", Some("invalid"));
    assert!(
        files.len() >= 6,
        "examples/ should hold the sample, found {files:?}"
    );
    let mut failures = Vec::new();
    let mut applied = 0;
    // One namespace per example folder: the folders are alternatives, not one set.
    let mut namespaces = std::collections::BTreeMap::new();
    for file in &files {
        let folder = file.parent().expect("a parent folder").to_owned();
        let namespace = namespaces
            .entry(folder.clone())
            .or_insert_with(|| {
                unique_namespace(&format!("ex-{}", folder.file_name().unwrap().to_string_lossy()))
            })
            .clone();
        for doc in yaml_documents(file) {
            let (kind, name) = kind_and_name(&doc);
            let what = format!("{} {kind}/{name}", file.display());
            if let Err(e) = apply_document(&client, &namespace, &doc).await {
                failures.push(format!("{what}: rejected: {e}"));
                continue;
            }
            let read = dynamic_api(&client, &namespace, &kind)
                .get(&name)
                .await
                .expect("reads back");
            let read = serde_json::to_value(&read).expect("serializes");
            if let Err(difference) = contains_all(&doc["spec"], &read["spec"], "spec") {
                failures.push(format!("{what}: {difference}"));
            }
            let round_trip = match kind.as_str() {
                "App" => typed_round_trip::<App>(&read),
                "Channel" => typed_round_trip::<Channel>(&read),
                "Bundle" => typed_round_trip::<Bundle>(&read),
                "Rollout" => typed_round_trip::<Rollout>(&read),
                _ => unreachable!("dynamic_api accepted only the four kinds"),
            };
            if let Err(difference) = round_trip {
                failures.push(format!(
                    "{what}: the Rust type does not round-trip it: {difference}"
                ));
            }
            applied += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "examples that failed:\n{}",
        failures.join("\n")
    );
    assert!(
        applied >= 9,
        "expected the whole sample (App, Channels, Bundles, Rollout), applied {applied}"
    );
}

#[tokio::test]
async fn every_invalid_example_is_rejected_for_its_stated_reason() {
    let client = client_with_crds().await;
    let files = yaml_files("examples/invalid", None);
    assert!(
        files.len() >= 30,
        "examples/invalid should hold one file per rule, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let expected = expected_error(file, &text);
        let expected_status: u16 = text
            .lines()
            .find_map(|line| line.strip_prefix("# expect-status: "))
            .map(|code| code.trim().parse().expect("a numeric expect-status"))
            .unwrap_or(422);
        let documents = yaml_documents(file);
        let (last, setup) = documents
            .split_last()
            .unwrap_or_else(|| panic!("{} is empty", file.display()));
        let namespace = unique_namespace("invalid");
        for doc in setup {
            if let Err(e) = apply_document(&client, &namespace, doc).await {
                failures.push(format!(
                    "{}: the valid first document was rejected: {e}",
                    file.display()
                ));
            }
        }
        match apply_document(&client, &namespace, last).await {
            Ok(_) => failures.push(format!(
                "{}: accepted, expected a rejection with '{expected}'",
                file.display()
            )),
            Err(kube::Error::Api(status)) => {
                if !status.message.contains(&expected) {
                    failures.push(format!(
                        "{}: rejected with '{}', expected a message naming '{expected}'",
                        file.display(),
                        status.message
                    ));
                }
                if status.code != expected_status {
                    failures.push(format!(
                        "{}: rejected with HTTP {}, expected {expected_status}",
                        file.display(),
                        status.code
                    ));
                }
            }
            Err(other) => failures.push(format!(
                "{}: failed without an API answer: {other}",
                file.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid examples not rejected as stated:\n{}",
        failures.join("\n")
    );
}

/// Applies a status with the status field manager and checks that it reads back equal.
async fn status_round_trip<K>(client: &Client, namespace: &str, name: &str, status: serde_json::Value)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(field_manager::STATUS).force();
    api.patch_status(name, &params, &Patch::Apply(&patch))
        .await
        .unwrap_or_else(|e| panic!("{} {name}: the status was refused: {e}", K::kind(&())));
    let read = serde_json::to_value(api.get(name).await.expect("reads back")).expect("serializes");
    contains_all(&status, &read["status"], "status")
        .unwrap_or_else(|e| panic!("{} {name}: {e}", K::kind(&())));
}

fn condition(type_: &str, status: &str, reason: &str, generation: i64) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: format!("{type_} is {status}"),
        observed_generation: Some(generation),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap()),
    }
}

#[tokio::test]
async fn every_kind_has_a_status_subresource_that_keeps_what_the_controller_writes() {
    let client = client_with_crds().await;
    let namespace = unique_namespace("status");
    for file in yaml_files("examples", Some("invalid"))
        .iter()
        .filter(|f| !f.starts_with(repo_root().join("examples/standalone")))
    {
        for doc in yaml_documents(file) {
            apply_document(&client, &namespace, &doc)
                .await
                .expect("the example applies");
        }
    }
    let t = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let ready = |generation| condition(condition::READY, "True", reason::RECONCILED, generation);

    let app_status = serde_json::json!({
        "conditions": [ready(1), condition(condition::RECONCILING, "False", reason::RECONCILED, 1)],
        "observedGeneration": 1,
        "endpoint": "https://updates.example.com",
        "readyReplicas": 2,
        "replicas": 2,
        "monthlyActiveDevices": 123456,
    });
    status_round_trip::<App>(&client, &namespace, "shop", app_status).await;

    let channel_status = serde_json::to_value(ChannelStatus {
        conditions: vec![ready(1)],
        observed_generation: Some(1),
        stable: Some(ServedBundle {
            bundle: Some("shop-1.4.2".into()),
            version: "1.4.2".into(),
        }),
        candidate: None,
        promoted: Some(ota_operator::api::channel::PromotedBundle {
            bundle: "shop-1.4.2".into(),
            over_bundle_ref: Some("shop-1.4.1".into()),
            rollout: "to-1.4.2".into(),
        }),
        history: vec![
            ota_operator::api::channel::HistoryEntry {
                bundle: "shop-1.4.1".into(),
                version: "1.4.1".into(),
            },
            ota_operator::api::channel::HistoryEntry {
                bundle: "shop-1.4.2".into(),
                version: "1.4.2".into(),
            },
        ],
    })
    .unwrap();
    status_round_trip::<Channel>(&client, &namespace, "production", channel_status).await;

    let bundle_status = serde_json::to_value(BundleStatus {
        conditions: vec![
            ready(1),
            condition(condition::SYNCED, "True", reason::RECONCILED, 1),
        ],
        observed_generation: Some(1),
        checksum: Some("bc7ccec828342a019c114a7f5ce9382b023c44cdeb9c591e7bb11c1e3a573dff".into()),
        zip_size: Some(1_234_567),
        uncompressed_size: Some(4_567_890),
        file_count: Some(321),
        storage: Some(BundleStorageLocation {
            zip_key: "shop/zips/1.4.2.zip".into(),
            manifest_key: Some("shop/manifests/1.4.2.json".into()),
            compressed_variants: true,
        }),
    })
    .unwrap();
    status_round_trip::<Bundle>(&client, &namespace, "shop-1.4.2", bundle_status).await;

    let rollout_status = serde_json::to_value(RolloutStatus {
        conditions: vec![condition(condition::PAUSED, "True", reason::PAUSE_STEP, 1)],
        observed_generation: Some(1),
        phase: Some(RolloutPhase::Paused),
        current_step_index: Some(1),
        current_percent: Some(5),
        stable_bundle: Some("shop-1.4.2".into()),
        candidate_bundle: Some("shop-1.5.0".into()),
        salt: Some("2f1c0e6e-8b4c-4f7e-9d61-5a3c2b1a0f9e".into()),
        pause_conditions: vec![PauseCondition {
            reason: reason::PAUSE_STEP.into(),
            start_time: t.clone(),
            until: Some(t.clone()),
        }],
        started_at: Some(t.clone()),
        aborted_at: None,
        completed_at: None,
        analysis: Some(AnalysisFigures {
            attempts: 250,
            failures: 3,
            failure_rate: 0.012,
            lower_bound: 0.0041,
            evaluated_at: t.clone(),
        }),
        metrics: vec![MetricStatus {
            name: "crash-rate".into(),
            phase: MetricPhase::Error,
            dry_run: true,
            measurements: 3,
            successful: 1,
            failed: 0,
            inconclusive: 1,
            errors: 1,
            consecutive_errors: 1,
            step_measurements: 2,
            last_measurements: vec![
                MetricMeasurement {
                    phase: MeasurementPhase::Inconclusive,
                    value: Some("[0.01, 0.2]".into()),
                    measured_at: t.clone(),
                    message: None,
                },
                MetricMeasurement {
                    phase: MeasurementPhase::Error,
                    value: None,
                    measured_at: t,
                    message: Some("connection refused".into()),
                },
            ],
        }],
        message: Some("Paused for 1h at 5%".into()),
        handled_commands: [("ota.dev/pause".to_owned(), "2026-01-01T00:00:00Z".to_owned())].into(),
        // Never serialized with the status (its own field manager writes it).
        pending_notifications: Vec::new(),
    })
    .unwrap();
    status_round_trip::<Rollout>(&client, &namespace, "shop-1.5.0", rollout_status).await;
}
