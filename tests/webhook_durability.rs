//! Webhook deliveries survive a controller restart: a delivery the receiver keeps refusing is
//! pending in the Rollout's `status.pendingNotifications` when the in-process controller stops,
//! nothing sends it while no controller runs, and the next controller delivers it with the same
//! `X-Ota-Delivery` id and body, signed with the Secret's key. Against the real test API server.
//! Run with `tests/run.sh --test webhook_durability`.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use ota_operator::api::Rollout;
use serde_json::{Value, json};
use support::{controller::*, *};

/// One POST the receiver got, and whether it was accepted.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    delivery: String,
    event: String,
    body: Vec<u8>,
    accepted: bool,
}

/// A real webhook receiver on 127.0.0.1 that answers 500 while `accepting` is false and 200
/// after, and keeps what it got.
async fn webhook_receiver(accepting: Arc<AtomicBool>) -> (String, Arc<Mutex<Vec<Received>>>) {
    use axum::{body::Bytes, http::HeaderMap, http::StatusCode, routing::post};
    let received = Arc::new(Mutex::new(Vec::<Received>::new()));
    let kept = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let accepted = accepting.load(Ordering::SeqCst);
            kept.lock().unwrap().push(Received {
                signature: header("x-ota-signature-256"),
                delivery: header("x-ota-delivery"),
                event: header("x-ota-event"),
                body: body.to_vec(),
                accepted,
            });
            match accepted {
                true => StatusCode::OK,
                false => StatusCode::INTERNAL_SERVER_ERROR,
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}/hook"), received)
}

/// HMAC-SHA256 of `body` under `key`, as the receiver checks it (from the algorithm, not
/// through the crate's signer).
fn expected_signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The ids in the Rollout's `status.pendingNotifications`, read from the API server.
async fn pending_ids(rollouts: &Api<Rollout>, name: &str) -> Vec<String> {
    let rollout = rollouts.get(name).await.expect("the Rollout");
    rollout
        .status
        .map(|status| status.pending_notifications.into_iter().map(|p| p.id).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_pending_webhook_delivery_is_sent_by_the_next_controller_with_the_same_id_and_body() {
    const SIGNING_KEY: &str = "the receiver's shared secret";
    let client = client_with_crds().await;
    let namespace = unique_namespace("ctl-webhook");
    let accepting = Arc::new(AtomicBool::new(false));
    let (hook_url, received) = webhook_receiver(accepting.clone()).await;
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(
            "hooks",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(&json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hooks"},
                "stringData": {"url": hook_url, "signingKey": SIGNING_KEY}
            })),
        )
        .await
        .expect("the webhook Secret is created");
    let running = start(&client, options(&namespace, false, "first")).await;
    // A Rollout naming a Channel that does not exist: its Stalled transition is announced.
    let rollout = json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "to-2.0"},
        "spec": {
            "channelRef": "nowhere", "bundleRef": "shop-2.0", "steps": [{"setPercent": 100}],
            "notifications": {"webhook": {"secretRef": {"name": "hooks"}}}
        }
    });
    apply_document(&client, &namespace, &rollout)
        .await
        .expect("the Rollout is created");
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &namespace);

    // The receiver refuses the first attempt and its retry; the delivery is pending in status.
    let first = eventually(30, "two refused attempts of one delivery", || async {
        let received = received.lock().unwrap().clone();
        let first = received.first()?.clone();
        (received.iter().filter(|r| r.delivery == first.delivery).count() >= 2).then_some(first)
    })
    .await;
    eventually(10, "the delivery is pending in the Rollout's status", || async {
        pending_ids(&rollouts, "to-2.0")
            .await
            .contains(&first.delivery)
            .then_some(())
    })
    .await;
    running.stop().await;

    // While no controller runs, nothing sends it (the next retry was due within 4 s).
    let while_stopped = received.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        while_stopped,
        "no delivery is attempted while the controller is stopped"
    );
    assert!(
        pending_ids(&rollouts, "to-2.0").await.contains(&first.delivery),
        "the delivery stays pending while the controller is stopped"
    );

    // The receiver takes deliveries again; the next controller resumes the pending one.
    accepting.store(true, Ordering::SeqCst);
    let running = start(&client, options(&namespace, false, "second")).await;
    let delivered = eventually(30, "the pending delivery reaches the receiver", || async {
        let received = received.lock().unwrap().clone();
        received
            .into_iter()
            .find(|r| r.accepted && r.delivery == first.delivery)
    })
    .await;
    assert_eq!(
        delivered.body, first.body,
        "the same body as the refused attempts"
    );
    assert_eq!(delivered.event, first.event);
    assert_eq!(
        delivered.signature,
        expected_signature(SIGNING_KEY.as_bytes(), &delivered.body)
    );
    let body: Value = serde_json::from_slice(&delivered.body).expect("a JSON body");
    assert_eq!(body["id"], first.delivery.as_str());
    assert_eq!(body["rollout"]["name"], "to-2.0");
    assert_eq!(body["reason"], delivered.event.as_str());
    eventually(10, "the delivered notification leaves the status", || async {
        (!pending_ids(&rollouts, "to-2.0").await.contains(&first.delivery)).then_some(())
    })
    .await;
    running.stop().await;
}
