//! The metric providers of rollout analysis ([`ota_operator::analysis`]) against real parts on
//! 127.0.0.1: the test Prometheus server (tests/prometheus/prometheus.sh) scraping an exporter
//! whose values the test sets, a real HTTP server playing a web metrics service, and header
//! Secrets read from the test API server (the controller's source) and from a folder's YAML
//! (standalone mode's). Run with `tests/run.sh --test analysis_providers`.

mod support;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect},
    routing::{get, post},
};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use ota_operator::{
    analysis::{FolderSecrets, KubeSecrets, Providers, SecretSource},
    api::Rollout,
    clock::{Clock, TestClock},
    core::rollout::measurement::{
        HeaderRequest, HeaderValue, Measured, MeasurementRequest, MetricValue, ProviderRequest, WebMethod,
    },
};
use serde_json::json;
use support::exporter::{Exporter, prometheus_url};

/// The token the web server accepts.
const TOKEN: &str = "tok-3c1f9a7e";

fn clock() -> TestClock {
    TestClock::at(Timestamp::from_second(1_800_000_000).expect("a time"))
}

fn providers<S: SecretSource>(secrets: S, clock: &TestClock) -> Providers<S> {
    Providers::new(secrets, Arc::new(clock.clone())).expect("the providers are built")
}

fn prometheus(address: &str, query: &str, timeout: Duration) -> MeasurementRequest {
    MeasurementRequest {
        metric: "prometheus-metric".to_owned(),
        provider: ProviderRequest::Prometheus {
            address: address.to_owned(),
            query: query.to_owned(),
            headers: Vec::new(),
            timeout,
        },
    }
}

fn web(url: &str, json_path: &str, timeout: Duration) -> MeasurementRequest {
    MeasurementRequest {
        metric: "web-metric".to_owned(),
        provider: ProviderRequest::Web {
            url: url.to_owned(),
            method: WebMethod::Get,
            headers: Vec::new(),
            body: None,
            json_path: json_path.to_owned(),
            timeout,
        },
    }
}

fn with_headers(mut request: MeasurementRequest, with: Vec<HeaderRequest>) -> MeasurementRequest {
    match &mut request.provider {
        ProviderRequest::Prometheus { headers, .. } | ProviderRequest::Web { headers, .. } => *headers = with,
    }
    request
}

fn secret_header(name: &str, key: &str) -> Vec<HeaderRequest> {
    vec![HeaderRequest {
        name: "Authorization".to_owned(),
        value: HeaderValue::Secret {
            name: name.to_owned(),
            key: key.to_owned(),
        },
    }]
}

/// The error of a measurement that must have failed.
fn error_of(measured: &Measured) -> &str {
    match &measured.value {
        Err(error) => error,
        Ok(value) => panic!("{} measured {value:?}, expected an error", measured.metric),
    }
}

/// Measures `request` until its value is `want` (the first scrape of a new target takes up to
/// the discovery manager's 5 s throttle plus a scrape interval); panics after 30 s with the last
/// measurement.
async fn measure_until<S: SecretSource>(
    providers: &Providers<S>,
    request: &MeasurementRequest,
    want: &MetricValue,
) -> Measured {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let measured = providers.measure_one("default", request).await;
        if measured.value.as_ref() == Ok(want) {
            return measured;
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} within 30 s; the last measurement: {measured:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn prometheus_reads_the_values_an_exporter_serves_through_the_real_server() {
    let exporter = Exporter::start("analysis-value").await;
    let clock = clock();
    let providers = providers(FolderSecrets::new(), &clock);
    let selector = format!("{{ota_test=\"{}\"}}", exporter.label());
    let timeout = Duration::from_secs(5);
    exporter.set("ota_checkout_error_ratio", 0.02);
    exporter.set("ota_idle_ratio", f64::NAN);
    exporter.set("ota_unbounded_ratio", f64::INFINITY);
    for pod in ["a", "b", "c"] {
        let value = match pod {
            "a" => 3.0,
            "b" => 1.0,
            _ => 2.0,
        };
        exporter.set(&format!("ota_requests{{pod=\"{pod}\"}}"), value);
    }

    let ratio = prometheus(
        prometheus_url(),
        &format!("ota_checkout_error_ratio{selector}"),
        timeout,
    );
    let measured = measure_until(&providers, &ratio, &MetricValue::Number(0.02)).await;
    assert_eq!(measured.metric, "prometheus-metric");
    assert_eq!(measured.at, clock.now(), "the time is the injected clock's");
    // A new value reaches the query at the next scrape (every second).
    exporter.set("ota_checkout_error_ratio", 0.31);
    measure_until(&providers, &ratio, &MetricValue::Number(0.31)).await;

    let several = prometheus(
        prometheus_url(),
        &format!("sort(ota_requests{selector})"),
        timeout,
    );
    let measured = providers.measure_one("default", &several).await;
    assert_eq!(measured.value, Ok(MetricValue::List(vec![1.0, 2.0, 3.0])));
    let scalar = prometheus(
        prometheus_url(),
        &format!("scalar(sum(ota_requests{selector}))"),
        timeout,
    );
    assert_eq!(
        providers.measure_one("default", &scalar).await.value,
        Ok(MetricValue::Number(6.0))
    );
    let unbounded = prometheus(
        prometheus_url(),
        &format!("ota_unbounded_ratio{selector}"),
        timeout,
    );
    assert_eq!(
        providers.measure_one("default", &unbounded).await.value,
        Ok(MetricValue::Number(f64::INFINITY))
    );

    let idle = prometheus(prometheus_url(), &format!("ota_idle_ratio{selector}"), timeout);
    let measured = providers.measure_one("default", &idle).await;
    let error = error_of(&measured);
    assert!(error.contains("is NaN"), "{error}");
    assert!(error.contains("ota_idle_ratio"), "the series is named: {error}");

    let missing = prometheus(
        prometheus_url(),
        &format!("ota_no_such_metric{selector}"),
        timeout,
    );
    let measured = providers.measure_one("default", &missing).await;
    assert!(
        error_of(&measured).starts_with("the query returned no data"),
        "{measured:?}"
    );
    let or_zero = prometheus(
        prometheus_url(),
        &format!("sum(ota_no_such_metric{selector}) or vector(0)"),
        timeout,
    );
    assert_eq!(
        providers.measure_one("default", &or_zero).await.value,
        Ok(MetricValue::Number(0.0))
    );

    let range = prometheus(prometheus_url(), &format!("ota_requests{selector}[1m]"), timeout);
    let measured = providers.measure_one("default", &range).await;
    assert!(error_of(&measured).contains("range vector"), "{measured:?}");
}

#[tokio::test]
async fn bad_promql_is_a_clear_error_from_prometheus() {
    let clock = clock();
    let providers = providers(FolderSecrets::new(), &clock);
    let request = prometheus(
        prometheus_url(),
        "sum(rate(http_requests_total[5m]",
        Duration::from_secs(5),
    );
    let measured = providers.measure_one("default", &request).await;
    let error = error_of(&measured);
    assert!(
        error.starts_with("Prometheus refused the query (bad_data): "),
        "{error}"
    );
    assert!(error.contains("parse error"), "{error}");
}

#[tokio::test]
async fn an_unreachable_or_silent_prometheus_is_an_error_within_the_timeout() {
    let clock = clock();
    let providers = providers(FolderSecrets::new(), &clock);
    let timeout = Duration::from_millis(800);

    // A port nothing listens on: refused at once.
    let unused = format!("http://127.0.0.1:{}", support::free_port());
    let started = Instant::now();
    let measured = providers
        .measure_one("default", &prometheus(&unused, "up", timeout))
        .await;
    let error = error_of(&measured);
    assert!(error.starts_with(&format!("cannot reach {unused}: ")), "{error}");
    assert!(started.elapsed() < timeout + Duration::from_secs(1));

    // A server that takes connections and never answers: the timeout ends the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let started = Instant::now();
    let measured = providers
        .measure_one("default", &prometheus(&address, "up", timeout))
        .await;
    assert_eq!(
        error_of(&measured),
        format!("no answer within 800ms from {address}")
    );
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    held.abort();

    let measured = providers
        .measure_one("default", &prometheus("127.0.0.1:9090", "up", timeout))
        .await;
    assert!(
        error_of(&measured).contains("is not a valid http(s) URL"),
        "{measured:?}"
    );
}

/// A web metrics service with one route per kind of answer.
async fn web_server() -> SocketAddr {
    async fn slow() -> Json<serde_json::Value> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Json(json!({"rate": 0.1}))
    }
    async fn authorized(headers: HeaderMap) -> impl IntoResponse {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if sent == format!("Bearer {TOKEN}") {
            (StatusCode::OK, Json(json!({"passed": 1}))).into_response()
        } else {
            // Echoes what it was sent, as careless error pages do.
            (StatusCode::UNAUTHORIZED, format!("unknown credentials: {sent}")).into_response()
        }
    }
    /// The Prometheus query API behind an authenticating proxy with tenants (as Cortex or Mimir).
    async fn tenant_query(headers: HeaderMap) -> impl IntoResponse {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
        };
        if header("authorization") != format!("Bearer {TOKEN}") || header("x-scope-orgid") != "tenant-1" {
            return (StatusCode::UNAUTHORIZED, "no tenant or bad credentials").into_response();
        }
        Json(json!({"status": "success", "data": {"resultType": "scalar", "result": [1_800_000_000, "42"]}}))
            .into_response()
    }
    async fn echo(headers: HeaderMap, body: String) -> impl IntoResponse {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        Json(json!({"contentType": content_type, "got": body["threshold"]}))
    }
    let app = Router::new()
        .route("/number", get(|| async { Json(json!({"data": {"errorRate": 0.02}})) }))
        .route("/string", get(|| async { Json(json!({"data": {"errorRate": "0.5"}})) }))
        .route("/list", get(|| async { Json(json!({"rates": [0.1, 0.2, "0.3"]})) }))
        .route(
            "/regions",
            get(|| async { Json(json!({"regions": [{"name": "eu", "rate": 1}, {"name": "us", "rate": 2}]})) }),
        )
        .route("/garbage", get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{\"rate\": 0.2,,, ~~") }))
        .route(
            "/html",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please sign in</body></html>",
                )
            }),
        )
        .route(
            "/failing",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "database unavailable"}))) }),
        )
        .route("/slow", get(slow))
        .route("/large", get(|| async { format!("[{}1]", "1,".repeat(600_000)) }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route("/moved", get(|| async { Redirect::temporary("/number") }))
        .route("/authorized", get(authorized))
        .route("/echo", post(echo))
        .route("/tenants/prometheus/api/v1/query", get(tenant_query));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the web server serves") });
    address
}

#[tokio::test]
async fn the_web_provider_reads_numbers_and_lists_and_names_what_it_found_otherwise() {
    let address = web_server().await;
    let clock = clock();
    let providers = providers(FolderSecrets::new(), &clock);
    let url = |path: &str| format!("http://{address}{path}");
    let timeout = Duration::from_secs(5);
    let cases: Vec<(&str, &str, Result<MetricValue, &str>)> = vec![
        ("/number", "$.data.errorRate", Ok(MetricValue::Number(0.02))),
        ("/number", "{$.data.errorRate}", Ok(MetricValue::Number(0.02))),
        ("/moved", "$.data.errorRate", Ok(MetricValue::Number(0.02))),
        ("/string", "$.data.errorRate", Ok(MetricValue::Number(0.5))),
        ("/list", "$.rates", Ok(MetricValue::List(vec![0.1, 0.2, 0.3]))),
        (
            "/regions",
            "$.regions[*].rate",
            Ok(MetricValue::List(vec![1.0, 2.0])),
        ),
        (
            "/number",
            "$.data.crashRate",
            Err("$.data.crashRate matches nothing in the answer"),
        ),
        (
            "/number",
            "$.data",
            Err("$.data is an object (keys: errorRate), not a number or a list of numbers"),
        ),
        (
            "/regions",
            "$.regions[*].name",
            Err(
                "$.regions[*].name is 2 values, of which value 0 is the string \"eu\", not a number or a list of numbers",
            ),
        ),
        (
            "/garbage",
            "$.rate",
            Err("the answer is not JSON (content type application/json): {\"rate\": 0.2,,, ~~"),
        ),
        (
            "/html",
            "$.rate",
            Err(
                "the answer is not JSON (content type text/html; charset=utf-8): <!DOCTYPE html> <html><head><title>Sign in</title></head><body>Please sign in</body></html>",
            ),
        ),
        (
            "/failing",
            "$.rate",
            Err("HTTP 500: {\"error\":\"database unavailable\"}"),
        ),
        ("/large", "$[0]", Err("the answer is larger than 1048576 bytes")),
    ];
    for (path, json_path, want) in cases {
        let measured = providers
            .measure_one("default", &web(&url(path), json_path, timeout))
            .await;
        match (&measured.value, &want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{path} {json_path}"),
            (Err(got), Err(want)) => assert_eq!(got, want, "{path} {json_path}"),
            (got, want) => panic!("{path} {json_path}: measured {got:?}, expected {want:?}"),
        }
    }

    let measured = providers
        .measure_one("default", &web(&url("/loop"), "$.rate", timeout))
        .await;
    assert!(
        error_of(&measured).starts_with(&format!("cannot reach {}: ", url("/loop"))),
        "{measured:?}"
    );
    assert!(error_of(&measured).contains("redirect"), "{measured:?}");

    let slow = Duration::from_millis(300);
    let started = Instant::now();
    let measured = providers
        .measure_one("default", &web(&url("/slow"), "$.rate", slow))
        .await;
    assert_eq!(
        error_of(&measured),
        format!("no answer within 300ms from {}", url("/slow"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let post = MeasurementRequest {
        metric: "posted".to_owned(),
        provider: ProviderRequest::Web {
            url: url("/echo"),
            method: WebMethod::Post,
            headers: Vec::new(),
            body: Some(r#"{"threshold": 7}"#.to_owned()),
            json_path: "$.got".to_owned(),
            timeout,
        },
    };
    assert_eq!(
        providers.measure_one("default", &post).await.value,
        Ok(MetricValue::Number(7.0))
    );
    let mut content_type = post.clone();
    if let ProviderRequest::Web { json_path, .. } = &mut content_type.provider {
        *json_path = "$.contentType".to_owned();
    }
    let measured = providers.measure_one("default", &content_type).await;
    assert_eq!(
        error_of(&measured),
        "$.contentType is the string \"application/json\", not a number or a list of numbers",
        "a POST body is sent as JSON"
    );
}

#[tokio::test]
async fn measure_takes_every_request_of_a_rollout_at_once_and_returns_one_measurement_each() {
    let address = web_server().await;
    let clock = clock();
    let providers = providers(FolderSecrets::new(), &clock);
    let rollout: Rollout = serde_json::from_value(json!({
        "apiVersion": "ota.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "to-2.0", "namespace": "shop"},
        "spec": {"channelRef": "production", "bundleRef": "shop-2.0.0", "steps": [{"setPercent": 100}]},
    }))
    .expect("a Rollout");
    let mut requests = Vec::new();
    for index in 0..12 {
        let mut request = web(
            &format!("http://{address}/slow"),
            "$.rate",
            Duration::from_millis(600),
        );
        request.metric = format!("slow-{index}");
        requests.push(request);
    }
    let mut good = web(
        &format!("http://{address}/number"),
        "$.data.errorRate",
        Duration::from_secs(5),
    );
    good.metric = "good".to_owned();
    requests.push(good);
    let started = Instant::now();
    let measured = providers.measure_all(&rollout, &requests).await;
    let took = started.elapsed();
    assert_eq!(measured.len(), requests.len());
    let mut names: Vec<&str> = measured.iter().map(|m| m.metric.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = requests.iter().map(|r| r.metric.as_str()).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    // Eight at a time: two rounds of timeouts, not thirteen in a row.
    assert!(took < Duration::from_millis(600 * 3), "{took:?}");
    let good = measured.iter().find(|m| m.metric == "good").unwrap();
    assert_eq!(good.value, Ok(MetricValue::Number(0.02)));
    assert!(measured.iter().filter(|m| m.value.is_err()).count() == 12);
}

#[tokio::test]
async fn a_bearer_token_from_a_cluster_secret_reaches_the_server_and_never_an_error() {
    let address = web_server().await;
    let client = support::client().await;
    let namespace = support::unique_namespace("analysis-secret");
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(
            "metrics-api",
            &PatchParams::apply(support::TEST_MANAGER),
            &Patch::Apply(&json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "metrics-api"},
                // As `echo "Bearer ..." > file; kubectl create secret --from-file` writes it.
                "stringData": {"authorization": format!("Bearer {TOKEN}\n"), "stale": "Bearer tok-old-5e2b"}
            })),
        )
        .await
        .expect("the Secret is created");
    let clock = clock();
    let providers = providers(KubeSecrets::new(client), &clock);
    let url = format!("http://{address}/authorized");
    let request = |name: &str, key: &str| {
        with_headers(
            web(&url, "$.passed", Duration::from_secs(5)),
            secret_header(name, key),
        )
    };

    let measured = providers
        .measure_one(&namespace, &request("metrics-api", "authorization"))
        .await;
    assert_eq!(measured.value, Ok(MetricValue::Number(1.0)));

    // A wrong token: the server echoes it in its 401, and the error hides it.
    let measured = providers
        .measure_one(&namespace, &request("metrics-api", "stale"))
        .await;
    assert_eq!(error_of(&measured), "HTTP 401: unknown credentials: ***");

    let measured = providers
        .measure_one(&namespace, &request("metrics-api", "token"))
        .await;
    assert_eq!(
        error_of(&measured),
        format!("header Authorization: Secret {namespace}/metrics-api has no key token")
    );
    let measured = providers
        .measure_one(&namespace, &request("prometheus-token", "token"))
        .await;
    assert_eq!(
        error_of(&measured),
        format!("header Authorization: Secret {namespace}/prometheus-token does not exist")
    );
    // Another namespace's Rollout does not see this namespace's Secret.
    let measured = providers
        .measure_one("elsewhere", &request("metrics-api", "authorization"))
        .await;
    assert_eq!(
        error_of(&measured),
        "header Authorization: Secret elsewhere/metrics-api does not exist"
    );
}

#[tokio::test]
async fn a_bearer_token_from_a_secret_of_a_standalone_folder_reaches_the_server() {
    let address = web_server().await;
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("secrets.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: metrics-api}}\ntype: Opaque\n\
             stringData:\n  authorization: Bearer {TOKEN}\n"
        ),
    )
    .unwrap();
    let loaded = ota_operator::standalone::load::load(folder.path()).expect("the folder is read");
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let secrets = FolderSecrets::new();
    secrets.replace(loaded.secrets);
    let clock = clock();
    let providers = providers(secrets.clone(), &clock);
    let request = with_headers(
        web(
            &format!("http://{address}/authorized"),
            "$.passed",
            Duration::from_secs(5),
        ),
        secret_header("metrics-api", "authorization"),
    );
    assert_eq!(
        providers.measure_one("default", &request).await.value,
        Ok(MetricValue::Number(1.0))
    );
    // The Secret gone from the folder at the next read: an error, not a panic.
    secrets.replace(Default::default());
    let measured = providers.measure_one("default", &request).await;
    assert_eq!(
        error_of(&measured),
        "header Authorization: Secret default/metrics-api does not exist"
    );
}

#[tokio::test]
async fn literal_and_secret_headers_reach_a_prometheus_api_behind_a_proxy() {
    let address = web_server().await;
    let secrets = FolderSecrets::new();
    secrets.replace(
        [(
            ("default".to_owned(), "prometheus".to_owned()),
            [("token".to_owned(), format!("Bearer {TOKEN}").into_bytes())]
                .into_iter()
                .collect(),
        )]
        .into_iter()
        .collect(),
    );
    let clock = clock();
    let providers = providers(secrets, &clock);
    let tenant = HeaderRequest {
        name: "X-Scope-OrgID".to_owned(),
        value: HeaderValue::Literal("tenant-1".to_owned()),
    };
    let proxy = format!("http://{address}/tenants/prometheus/");
    let mut headers = secret_header("prometheus", "token");
    headers.push(tenant.clone());
    let request = with_headers(prometheus(&proxy, "up", Duration::from_secs(5)), headers);
    assert_eq!(
        providers.measure_one("default", &request).await.value,
        Ok(MetricValue::Number(42.0))
    );
    let without_token = with_headers(prometheus(&proxy, "up", Duration::from_secs(5)), vec![tenant]);
    let measured = providers.measure_one("default", &without_token).await;
    assert_eq!(error_of(&measured), "HTTP 401: no tenant or bad credentials");

    let bad = with_headers(
        prometheus(&proxy, "up", Duration::from_secs(5)),
        vec![HeaderRequest {
            name: "Bad Header".to_owned(),
            value: HeaderValue::Literal("x".to_owned()),
        }],
    );
    let measured = providers.measure_one("default", &bad).await;
    assert_eq!(
        error_of(&measured),
        "\"Bad Header\" is not a valid HTTP header name"
    );
}
