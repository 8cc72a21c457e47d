//! Rate limits of the public endpoints, on the real `ota standalone` binary over real HTTP: a
//! client over its limit is answered 429 with `Retry-After` while other clients are served;
//! the per-App limit caps all clients together; a client that waits `Retry-After` is served
//! again; the default limits let a normal burst through; `enabled: false` turns them off.
//! Clients are told apart by `X-Forwarded-For`, which the App trusts (`clientIpHeader`); every
//! request comes from 127.0.0.1.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{
    load::{APP, failure_event, reporting_device},
    standalone::StandaloneProcess,
};

/// The example's App with `rate_limits` (YAML of `spec.server.rateLimits`, indented by 6).
fn app_yaml(rate_limits: &str) -> String {
    format!(
        "apiVersion: ota.dev/v1alpha1
kind: App
metadata:
  name: shop
spec:
  appId: {APP}
  platforms: [ios, android]
  storage:
    filesystem:
      path: ./storage
  deviceStore:
    sqlite: {{}}
  server:
    rateLimits:
{rate_limits}
"
    )
}

async fn start(rate_limits: Option<&str>) -> StandaloneProcess {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let database = format!("sqlite://{}", dir.path().join("devices.db").display());
    let app = rate_limits.map(app_yaml);
    let extra: Vec<(&str, &str)> = app.iter().map(|yaml| ("app.yaml", yaml.as_str())).collect();
    let server = StandaloneProcess::start(&database, &extra).await;
    // The device store lives as long as the server's own folder.
    std::mem::forget(dir);
    server
}

fn update_check(device: &str, app_id: &str) -> Value {
    json!({
        "platform": "android", "device_id": device, "app_id": app_id, "custom_id": "",
        "version_build": "1.4.0", "version_code": "140", "version_os": "14",
        "version_name": "1.4.2", "plugin_version": "8.51.14", "is_emulator": false,
        "is_prod": true, "defaultChannel": "",
    })
}

/// What a client saw of one request.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// Sends `request` as the client at address `client` (through the trusted header).
async fn send(request: reqwest::RequestBuilder, client: &str) -> Answer {
    let response = request
        .header("X-Forwarded-For", client)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("text").parse().expect("whole seconds"));
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

fn check(http: &reqwest::Client, base: &str, device: u64) -> reqwest::RequestBuilder {
    http.post(format!("{base}/updates"))
        .json(&update_check(&reporting_device(device), APP))
}

/// Sends what `request` makes until an answer is not 200 (at most `tries` times, each request
/// one of a rate of 1 per second, so a slow machine refills at most one); that answer, and how
/// many were served before it.
async fn until_refused(
    tries: usize,
    client: &dyn Fn(usize) -> String,
    request: &dyn Fn(usize) -> reqwest::RequestBuilder,
) -> (Answer, usize) {
    for n in 0..tries {
        let answer = send(request(n), &client(n)).await;
        if answer.status != 200 {
            return (answer, n);
        }
    }
    panic!("{tries} requests in a row were served");
}

/// `ota_server_rate_limited_total{limit="<limit>"}` from the internal listener.
async fn limited(server: &StandaloneProcess, limit: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.internal))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    let line = format!("ota_server_rate_limited_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

fn assert_limited(answer: &Answer, limit: &str) {
    assert_eq!(answer.status, 429, "over the {limit} limit: {answer:?}");
    let seconds = answer.retry_after.expect("Retry-After on a 429");
    assert_eq!(seconds, 1, "Retry-After for a rate of 1 per second, rounded up");
    assert_eq!(answer.body["error"], "rate_limited", "{answer:?}");
    let message = answer.body["message"].as_str().expect("a message");
    let says = if limit == "per_client" {
        "this client"
    } else {
        "this app"
    };
    assert!(message.contains(says), "{message}");
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_and_retry_after_while_others_are_served() {
    let server = start(Some(
        "      perClient: {requestsPerSecond: 1, burst: 3}
      clientIpHeader: X-Forwarded-For",
    ))
    .await;
    let http = reqwest::Client::new();
    let base = server.base.as_str();
    let (a, b) = ("203.0.113.1", "203.0.113.2");
    let as_a = |_: usize| a.to_owned();

    let (over, served) = until_refused(10, &as_a, &|n| check(&http, base, n as u64)).await;
    assert_limited(&over, "per_client");
    assert!(served >= 3, "the burst of 3 was served first, got {served}");
    // Every public endpoint counts, whatever the request says.
    let stats = |_: usize| {
        http.post(format!("{base}/stats"))
            .json(&failure_event(&reporting_device(9)))
    };
    assert_limited(&until_refused(2, &as_a, &stats).await.0, "per_client");
    let channel = |_: usize| {
        http.put(format!("{base}/channel_self"))
            .json(&update_check(&reporting_device(9), APP))
    };
    assert_limited(&until_refused(2, &as_a, &channel).await.0, "per_client");
    // An address written in front of the proxy's own is not a way out.
    let spoofed = |n: usize| format!("198.51.100.{n}, {a}");
    let (answer, _) = until_refused(2, &spoofed, &|n| check(&http, base, 20 + n as u64)).await;
    assert_limited(&answer, "per_client");
    // The probes are never limited.
    let ready = http
        .get(format!("{base}/readyz"))
        .header("X-Forwarded-For", a)
        .send()
        .await
        .expect("readyz answers");
    assert_eq!(ready.status(), 200);

    // Another client is served meanwhile.
    let other = send(check(&http, base, 10), b).await;
    assert_eq!(other.status, 200, "another client: {other:?}");
    assert!(limited(&server, "per_client").await >= 4);
    assert_eq!(limited(&server, "per_app").await, 0);

    // After the wait it was told, the client is served again.
    let (over, _) = until_refused(2, &as_a, &|n| check(&http, base, 30 + n as u64)).await;
    let wait = over.retry_after.expect("Retry-After");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let again = send(check(&http, base, 40), a).await;
    assert_eq!(again.status, 200, "after Retry-After: {again:?}");
}

#[tokio::test]
async fn the_per_app_limit_caps_all_clients_together() {
    let server = start(Some(
        "      perApp: {requestsPerSecond: 1, burst: 4}
      clientIpHeader: X-Forwarded-For",
    ))
    .await;
    let http = reqwest::Client::new();
    let base = server.base.as_str();

    // Each request from a client never seen before: the App's budget runs out all the same.
    let new_client = |n: usize| format!("203.0.113.{}", n + 1);
    let (over, served) = until_refused(20, &new_client, &|n| check(&http, base, n as u64)).await;
    assert_limited(&over, "per_app");
    assert!(served >= 4, "the App's burst of 4 was served first, got {served}");
    let stats = |_: usize| {
        http.post(format!("{base}/stats"))
            .json(&failure_event(&reporting_device(8)))
    };
    let other_clients = |n: usize| format!("198.51.100.{}", n + 1);
    assert_limited(&until_refused(2, &other_clients, &stats).await.0, "per_app");
    // An app this server does not serve has no App budget to exhaust (and nothing is written).
    let unknown = send(
        http.post(format!("{base}/updates"))
            .json(&update_check(&reporting_device(7), "com.example.other")),
        "192.0.2.1",
    )
    .await;
    assert_eq!(unknown.status, 200, "{unknown:?}");
    assert!(limited(&server, "per_app").await >= 2);
    assert_eq!(limited(&server, "per_client").await, 0);

    let (over, _) = until_refused(2, &new_client, &|n| check(&http, base, 30 + n as u64)).await;
    tokio::time::sleep(Duration::from_secs(over.retry_after.expect("Retry-After"))).await;
    let again = send(check(&http, base, 40), "192.0.2.2").await;
    assert_eq!(again.status, 200, "after Retry-After: {again:?}");
}

#[tokio::test]
async fn the_default_limits_let_a_normal_burst_through() {
    // The example's App sets no limits: the defaults apply. 200 devices behind one address
    // (a NAT) launch their app at once: an update check and a stats event each.
    let server = start(None).await;
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let mut requests = Vec::new();
    for n in 0..200u64 {
        let mut event = failure_event(&reporting_device(n));
        event["action"] = json!("set");
        let check = http
            .post(format!("{base}/updates"))
            .json(&update_check(&reporting_device(n), APP));
        let stats = http.post(format!("{base}/stats")).json(&event);
        for request in [check, stats] {
            requests.push(tokio::spawn(async move {
                request.send().await.map(|r| r.status().as_u16())
            }));
        }
    }
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("a task").expect("an answer"));
    }
    assert_eq!(statuses.len(), 400);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(limited(&server, "per_client").await, 0);
    assert_eq!(limited(&server, "per_app").await, 0);
}

#[tokio::test]
async fn disabled_limits_answer_no_429() {
    let server = start(Some(
        "      enabled: false
      perClient: {requestsPerSecond: 1, burst: 1}
      perApp: {requestsPerSecond: 1, burst: 1}",
    ))
    .await;
    let http = reqwest::Client::new();
    for n in 0..20 {
        let answer = send(check(&http, &server.base, n), "203.0.113.1").await;
        assert_eq!(answer.status, 200, "request {n} with limits off: {answer:?}");
    }
    assert_eq!(limited(&server, "per_client").await, 0);
}
