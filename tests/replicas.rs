//! Replicas in step: three real `ota standalone` processes share one database on the real
//! PostgreSQL server (`tests/run.sh --test replicas` starts it). A channel a device sets through
//! one is answered by the others within a second; a failure reported to one is never offered
//! again by the others; the rollout figures read through any replica agree; and after every
//! database connection of the replicas is dropped, a change still reaches them all within a
//! second (the change feed's catch-up read).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, Executor, postgres::PgConnection};

mod support;

use support::standalone::{BETA_CHANNEL, StandaloneProcess};

/// How soon every replica must know what one of them acknowledged.
const IN_STEP_WITHIN: Duration = Duration::from_secs(1);

fn fixture_body(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plugin")
        .join(name);
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("a fixture")).expect("JSON");
    fixture["body"].clone()
}

/// A fixture's body for device number `n`.
fn for_device(name: &str, n: u32) -> Value {
    let mut body = fixture_body(name);
    body["device_id"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
    body
}

async fn send(method: reqwest::Method, url: String, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, url)
        .json(body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The channel `replica` says device `n` is on.
async fn channel_of(replica: &StandaloneProcess, n: u32) -> Option<String> {
    let body = for_device("channel-7.33.0-android-get.json", n);
    let (_, answer) = send(
        reqwest::Method::PUT,
        format!("{}/channel_self", replica.base),
        &body,
    )
    .await;
    answer["channel"].as_str().map(str::to_owned)
}

/// Sets device `n`'s channel through `replica`.
async fn set_channel(replica: &StandaloneProcess, n: u32, channel: &str) {
    let mut body = for_device("channel-7.33.0-android-set.json", n);
    body["channel"] = json!(channel);
    let (status, answer) = send(
        reqwest::Method::POST,
        format!("{}/channel_self", replica.base),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "ok", "{answer}");
}

/// Waits until `holds` is true for every replica, at most [`IN_STEP_WITHIN`].
async fn every_replica_within(
    replicas: &[StandaloneProcess],
    what: &str,
    holds: impl AsyncFn(&StandaloneProcess) -> bool,
) {
    let started = Instant::now();
    for (index, replica) in replicas.iter().enumerate() {
        while !holds(replica).await {
            assert!(
                started.elapsed() < IN_STEP_WITHIN,
                "replica {index}: {what}, not within {IN_STEP_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn figures(replica: &StandaloneProcess) -> Value {
    let url = format!(
        "{}/internal/v1/rollout-figures?app_id=com.example.shop&channel=production&version=1.4.3&since_ms=0",
        replica.internal
    );
    reqwest::get(url)
        .await
        .expect("figures")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn replicas_on_one_postgres_database_agree_within_a_second() {
    let database = support::fresh_postgres_database("replicas").await;
    let extra = [BETA_CHANNEL];
    let replicas = vec![
        StandaloneProcess::start(&database, &extra).await,
        StandaloneProcess::start(&database, &extra).await,
        StandaloneProcess::start(&database, &extra).await,
    ];

    // A channel set through one replica.
    set_channel(&replicas[0], 1, "beta").await;
    every_replica_within(&replicas, "device 1 is on beta", async |replica| {
        channel_of(replica, 1).await.as_deref() == Some("beta")
    })
    .await;

    // A failure reported to another: no replica offers the bundle to that device again.
    let mut failure = for_device("updates-8.51.14-android.json", 2);
    failure["action"] = json!("update_fail");
    failure["version_name"] = json!("1.4.3");
    let (status, answer) = send(
        reqwest::Method::POST,
        format!("{}/stats", replicas[1].base),
        &failure,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let check = for_device("updates-8.51.14-android.json", 2);
    every_replica_within(&replicas, "1.4.3 is not offered to device 2", async |replica| {
        let (_, answer) = send(reqwest::Method::POST, format!("{}/updates", replica.base), &check).await;
        answer["error"] == "bundle_failed_on_device"
    })
    .await;

    // The rollout figures read through any replica agree.
    let expected = json!({"attempts": 1, "failures": 1});
    for replica in &replicas {
        assert_eq!(figures(replica).await, expected);
    }

    // Every connection of the replicas to the database is dropped; a change made right after
    // still reaches them all.
    let mut admin = PgConnection::connect(&database)
        .await
        .expect("PostgreSQL answers");
    let name = database
        .rsplit_once('/')
        .and_then(|(_, rest)| rest.split('?').next())
        .expect("a database name");
    let dropped: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .expect("the connections are dropped");
    assert!(
        dropped.len() >= 3,
        "each replica had a connection: {}",
        dropped.len()
    );
    admin.execute("SELECT 1").await.expect("still connected");
    set_channel(&replicas[2], 3, "beta").await;
    every_replica_within(&replicas, "device 3 is on beta", async |replica| {
        channel_of(replica, 3).await.as_deref() == Some("beta")
    })
    .await;
    let unset = for_device("channel-7.33.0-android-unset.json", 1);
    let (status, answer) = send(
        reqwest::Method::DELETE,
        format!("{}/channel_self", replicas[0].base),
        &unset,
    )
    .await;
    assert_eq!((status, &answer["status"]), (200, &json!("ok")), "{answer}");
    every_replica_within(&replicas, "device 1 is back on production", async |replica| {
        channel_of(replica, 1).await.as_deref() == Some("production")
    })
    .await;
}
