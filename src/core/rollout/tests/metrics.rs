//! The metrics of the analysis: parsing, the requests due, the judgement of each measurement and
//! what it does to the rollout, on the test clock (`now` of each decision).

use super::*;
use crate::api::rollout::{MeasurementPhase, MetricPhase};
use crate::core::rollout::measurement::{HeaderValue, MetricValue, ProviderRequest};

/// A Prometheus metric `name` judged by `result < 0.05`, with `extra` merged in.
fn metric(name: &str, extra: Value) -> Value {
    let mut metric = json!({
        "name": name,
        "prometheus": {
            "address": "http://prometheus.monitoring:9090",
            "query": "sum(rate(api_errors{app=\"{{app}}\",version=\"{{candidate}}\"}[5m]))",
        },
        "successCondition": "result < 0.05",
        "interval": "1m",
    });
    fixtures::merge(&mut metric, extra);
    metric
}

/// `steps`, the device analysis every 10 minutes (one attempt is enough), `action`, `metrics`.
fn measured(steps: Value, action: &str, metrics: Vec<Value>) -> Rollout {
    rollout_with(
        steps,
        json!({"interval": "10m", "minAttempts": 1, "action": action, "metrics": metrics}),
    )
}

/// 20% → pause until promoted → 100%: the metrics run in the background.
fn background(action: &str, metrics: Vec<Value>) -> Rollout {
    measured(
        json!([{"setPercent": 20}, {"pause": {}}, {"setPercent": 100}]),
        action,
        metrics,
    )
}

fn number(value: f64) -> Result<MetricValue, String> {
    Ok(MetricValue::Number(value))
}

fn outage() -> Result<MetricValue, String> {
    Err("Get http://prometheus.monitoring:9090/api/v1/query: connection refused".to_owned())
}

impl Sim {
    /// What the driver does at T0 + `seconds`: asks [`measurements_due`], answers each request
    /// from `answers` (by metric name), and decides with the measurements. The names measured.
    fn measure(
        &mut self,
        seconds: i64,
        answers: &[(&str, Result<MetricValue, String>)],
    ) -> (Vec<String>, RolloutPlan) {
        let (channels, bundles) = world();
        let due = measurements_due(&self.rollout, &channels, &bundles, t(seconds));
        self.measurements = due
            .iter()
            .map(|request| Measured {
                metric: request.metric.clone(),
                at: t(seconds),
                value: answers
                    .iter()
                    .find(|(name, _)| *name == request.metric)
                    .map_or_else(|| Err("no answer".to_owned()), |(_, value)| value.clone()),
            })
            .collect();
        let plan = self.at(seconds);
        self.measurements.clear();
        (due.into_iter().map(|r| r.metric).collect(), plan)
    }

    fn metric(&self, name: &str) -> &crate::api::rollout::MetricStatus {
        self.status()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no status for metric {name}: {:?}", self.status().metrics))
    }

    fn pauses(&self) -> Vec<&str> {
        self.status()
            .pause_conditions
            .iter()
            .map(|p| p.reason.as_str())
            .collect()
    }
}

// ---------------------------------------------------------------- parsing

#[test]
fn every_bad_metric_is_refused_naming_the_metric_and_the_field() {
    let (channels, bundles) = world();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "an unparsable successCondition",
            metric("error-rate", json!({"successCondition": "result <"})),
            "metric error-rate: successCondition \"result <\" is not a CEL expression",
        ),
        (
            "an unparsable failureCondition",
            metric("error-rate", json!({"failureCondition": "result >> 2"})),
            "metric error-rate: failureCondition \"result >> 2\" is not a CEL expression",
        ),
        (
            "a condition naming something else than result",
            metric("error-rate", json!({"successCondition": "reslt < 0.05"})),
            "metric error-rate: successCondition \"reslt < 0.05\" names reslt, but only result is defined",
        ),
        (
            "an unknown placeholder",
            metric(
                "error-rate",
                json!({"prometheus": {"query": "errors{version=\"{{version}}\"}"}}),
            ),
            "metric error-rate: prometheus.query: {{version}} is not a placeholder (they are {{candidate}}, {{stable}}",
        ),
        (
            "an unclosed placeholder",
            metric(
                "error-rate",
                json!({"prometheus": {"query": "errors{version=\"{{candidate\"}"}}),
            ),
            "metric error-rate: prometheus.query: a {{ is not closed by }}",
        ),
        (
            "an unknown placeholder in a web body",
            json!({"name": "qa", "web": {"url": "https://qa.example.com/{{candidate}}", "method": "POST", "body": "{\"v\": \"{{bundle}}\"}"}, "successCondition": "result == 1.0"}),
            "metric qa: web.body: {{bundle}} is not a placeholder",
        ),
        (
            "an unknown placeholder in a header",
            metric(
                "error-rate",
                json!({"prometheus": {"headers": [{"name": "X-Scope", "value": "{{tenant}}"}]}}),
            ),
            "metric error-rate: prometheus.headers X-Scope: {{tenant}} is not a placeholder",
        ),
        (
            "no provider",
            json!({"name": "error-rate", "successCondition": "result < 0.05"}),
            "metric error-rate: each metric needs exactly one provider: prometheus or web",
        ),
        (
            "two providers",
            metric("error-rate", json!({"web": {"url": "https://qa.example.com/"}})),
            "metric error-rate: each metric needs exactly one provider: prometheus or web",
        ),
        (
            "no condition",
            metric("error-rate", json!({"successCondition": null})),
            "metric error-rate: each metric needs a successCondition, a failureCondition or both",
        ),
        (
            "an interval that is not a duration",
            metric("error-rate", json!({"interval": "5x"})),
            "metric error-rate: interval \"5x\" is not a duration",
        ),
        (
            "a zero interval",
            metric("error-rate", json!({"interval": "0s"})),
            "metric error-rate: interval \"0s\" must be at least",
        ),
        (
            "a timeout of an hour",
            metric("error-rate", json!({"prometheus": {"timeout": "1h"}})),
            "metric error-rate: prometheus.timeout \"1h\" must be at most 10m",
        ),
        (
            "a name that is not a DNS label",
            metric("Error_Rate", json!({})),
            "analysis.metrics[0]: name \"Error_Rate\" must be a DNS label",
        ),
        (
            "a count of zero",
            metric("error-rate", json!({"count": 0})),
            "metric error-rate: count 0 is not between 1 and 1000",
        ),
        (
            "a negative failure limit",
            metric("error-rate", json!({"failureLimit": -1})),
            "metric error-rate: failureLimit -1 is not between 0 and 1000",
        ),
        (
            "a header with both a value and a Secret",
            metric(
                "error-rate",
                json!({"prometheus": {"headers": [{"name": "Authorization", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}}),
            ),
            "metric error-rate: prometheus.headers Authorization needs exactly one of value or valueFrom",
        ),
        (
            "a web URL that is not http",
            json!({"name": "qa", "web": {"url": "ftp://qa.example.com/"}, "successCondition": "result == 1.0"}),
            "metric qa: web.url \"ftp://qa.example.com/\" must be an http:// or https:// URL",
        ),
    ];
    for (what, bad, says) in cases {
        let rollout = background("rollback", vec![bad]);
        let invalid = validate(&rollout, &channels, &bundles).expect_err(what);
        assert_eq!(invalid.reason, reason::INVALID_SPEC, "{what}");
        assert!(invalid.message.contains(says), "{what}: {}", invalid.message);
        // The decision reads Stalled with the same message.
        let plan = Sim::new(rollout).plan_at(0);
        assert_eq!(
            desired(&plan, condition::STALLED).reason,
            reason::INVALID_SPEC,
            "{what}"
        );
        assert_eq!(
            plan.status.message.as_deref(),
            Some(invalid.message.as_str()),
            "{what}"
        );
    }
    let twice = background(
        "rollback",
        vec![metric("error-rate", json!({})), metric("error-rate", json!({}))],
    );
    let invalid = validate(&twice, &channels, &bundles).expect_err("a name used twice");
    assert!(
        invalid
            .message
            .contains("analysis.metrics[1]: the name error-rate is already taken"),
        "{}",
        invalid.message
    );
    let sound = background(
        "rollback",
        vec![
            metric("error-rate", json!({"failureCondition": "result > 0.1"})),
            json!({"name": "crash-free", "web": {"url": "https://stats.example.com/{{app}}/{{candidate}}?since={{startedAt}}",
                   "method": "POST", "body": "{\"channel\": \"{{channel}}\", \"percent\": {{percent}}}",
                   "jsonPath": "$.crashFree", "headers": [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "stats", "key": "token"}}}]},
                   "successCondition": "result.all(x, x > 0.99)", "dryRun": true}),
        ],
    );
    assert_eq!(validate(&sound, &channels, &bundles), Ok(()));
}

// ---------------------------------------------------------------- judgement

#[test]
fn cel_conditions_judge_a_number_or_a_list() {
    use MeasurementPhase::{Error, Failed, Inconclusive, Successful};
    let list = |values: &[f64]| MetricValue::List(values.to_vec());
    /// (successCondition, failureCondition, value, verdict, what the error says)
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        MetricValue,
        MeasurementPhase,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            Some("result < 0.05"),
            None,
            MetricValue::Number(0.01),
            Successful,
            "",
        ),
        (Some("result < 0.05"), None, MetricValue::Number(0.2), Failed, ""),
        (None, Some("result > 0.1"), MetricValue::Number(0.2), Failed, ""),
        (
            None,
            Some("result > 0.1"),
            MetricValue::Number(0.05),
            Successful,
            "",
        ),
        (
            Some("result < 0.05"),
            Some("result > 0.1"),
            MetricValue::Number(0.01),
            Successful,
            "",
        ),
        (
            Some("result < 0.05"),
            Some("result > 0.1"),
            MetricValue::Number(0.2),
            Failed,
            "",
        ),
        (
            Some("result < 0.05"),
            Some("result > 0.1"),
            MetricValue::Number(0.07),
            Inconclusive,
            "",
        ),
        // The failure condition wins when both hold.
        (
            Some("result > 0.0"),
            Some("result > 0.1"),
            MetricValue::Number(0.2),
            Failed,
            "",
        ),
        // An integer literal compares with the number.
        (Some("result < 1"), None, MetricValue::Number(0.5), Successful, ""),
        (
            Some("result.all(x, x < 0.01)"),
            None,
            list(&[0.001, 0.002]),
            Successful,
            "",
        ),
        (
            Some("result.all(x, x < 0.01)"),
            None,
            list(&[0.001, 0.2]),
            Failed,
            "",
        ),
        (
            None,
            Some("result.exists(x, x > 0.1)"),
            list(&[0.001, 0.2]),
            Failed,
            "",
        ),
        (
            Some("size(result) == 3"),
            None,
            list(&[1.0, 2.0, 3.0]),
            Successful,
            "",
        ),
        (Some("result[0] >= 0.99"), None, list(&[0.995]), Successful, ""),
        (Some("result.all(x, x < 0.01)"), None, list(&[]), Successful, ""),
        // Errors: a list where a number is expected, a condition that is not a bool.
        (
            Some("result < 0.05"),
            None,
            list(&[0.01]),
            Error,
            "successCondition \"result < 0.05\" could not be evaluated",
        ),
        (
            Some("result * 2.0"),
            None,
            MetricValue::Number(0.5),
            Error,
            "not true or false",
        ),
        (
            None,
            Some("result[3] > 1.0"),
            list(&[0.5]),
            Error,
            "failureCondition \"result[3] > 1.0\" could not be evaluated",
        ),
    ];
    for (success, failure, value, verdict, says) in cases {
        let mut written = json!({"name": "m", "prometheus": {"address": "http://p:9090", "query": "q"}});
        if let Some(success) = success {
            written["successCondition"] = json!(success);
        }
        if let Some(failure) = failure {
            written["failureCondition"] = json!(failure);
        }
        let rollout = background("rollback", vec![written]);
        let settings = Settings::parse(&rollout.spec).expect("valid");
        let (phase, message) = settings.metrics[0].judge(&value);
        let what = format!("{success:?} / {failure:?} on {value:?}");
        assert_eq!(phase, verdict, "{what}: {message:?}");
        match says {
            "" => assert_eq!(message, None, "{what}"),
            says => assert!(
                message.as_deref().is_some_and(|m| m.contains(says)),
                "{what}: {message:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------- requests

#[test]
fn metrics_are_due_every_interval_with_their_templates_filled_and_the_requeue_includes_them() {
    let web = json!({"name": "crash-free", "interval": "90s", "successCondition": "result > 0.99",
        "web": {"url": "https://stats.example.com/{{namespace}}/{{app}}/{{channel}}?v={{candidate}}&s={{stable}}&since={{startedAt}}",
                "method": "POST", "body": "{\"percent\": {{ percent }}}", "jsonPath": "$.crashFree",
                "headers": [{"name": "X-Release", "value": "{{candidate}}"},
                            {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "stats", "key": "token"}}}]}});
    let mut sim = Sim::new(background("rollback", vec![metric("error-rate", json!({})), web]));
    // Nothing is due before the rollout started, nor in the decision that starts it.
    let (due, plan) = sim.measure(0, &[]);
    assert_eq!(due, Vec::<String>::new());
    assert_eq!(sim.position(), (Some(Paused), 1, 20));
    assert_eq!(
        plan.requeue_at,
        Some(t(60)),
        "the first metric is due a minute after the start"
    );
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Running);
    assert_eq!(sim.metric("error-rate").measurements, 0);
    let (channels, bundles) = world();
    assert_eq!(measurements_due(&sim.rollout, &channels, &bundles, t(59)), []);
    let requests = measurements_due(&sim.rollout, &channels, &bundles, t(90));
    assert_eq!(requests.len(), 2);
    match &requests[0].provider {
        ProviderRequest::Prometheus {
            address,
            query,
            timeout,
            ..
        } => {
            assert_eq!(address, "http://prometheus.monitoring:9090");
            assert_eq!(query, "sum(rate(api_errors{app=\"shop\",version=\"1.5.0\"}[5m]))");
            assert_eq!(*timeout, std::time::Duration::from_secs(10));
        }
        other => panic!("a Prometheus request, not {other:?}"),
    }
    match &requests[1].provider {
        ProviderRequest::Web {
            url,
            body,
            headers,
            json_path,
            ..
        } => {
            assert_eq!(
                url,
                &format!(
                    "https://stats.example.com/{NS}/shop/production?v=1.5.0&s=1.4.2&since={}",
                    t(0)
                )
            );
            assert_eq!(body.as_deref(), Some("{\"percent\": 20}"));
            assert_eq!(json_path, "$.crashFree");
            assert_eq!(headers[0].value, HeaderValue::Literal("1.5.0".to_owned()));
            assert_eq!(
                headers[1].value,
                HeaderValue::Secret {
                    name: "stats".to_owned(),
                    key: "token".to_owned()
                }
            );
        }
        other => panic!("a web request, not {other:?}"),
    }
    // Paused waiting for a person, the metrics are still measured, each on its own interval.
    let (due, plan) = sim.measure(60, &[("error-rate", number(0.01))]);
    assert_eq!(due, ["error-rate"]);
    assert_eq!(plan.requeue_at, Some(t(90)));
    let (due, plan) = sim.measure(90, &[("crash-free", number(0.995))]);
    assert_eq!(due, ["crash-free"]);
    assert_eq!(plan.requeue_at, Some(t(120)));
    let (due, _) = sim.measure(120, &[("error-rate", number(0.01))]);
    assert_eq!(due, ["error-rate"]);
    assert_eq!(sim.metric("error-rate").measurements, 2);
    assert_eq!(sim.metric("crash-free").successful, 1);
    // A late look measures once and schedules from then.
    let (due, plan) = sim.measure(
        1000,
        &[("error-rate", number(0.01)), ("crash-free", number(0.995))],
    );
    assert_eq!(due, ["error-rate", "crash-free"]);
    assert_eq!(plan.requeue_at, Some(t(1060)));
    assert_eq!(sim.metric("error-rate").measurements, 3);
    // Completed: nothing more is measured, and the metrics read Successful.
    sim.command(annotation::PROMOTE, "1");
    let (_, plan) = sim.measure(1001, &[]);
    assert_eq!(sim.position(), (Some(Completed), 3, 100));
    assert_eq!(plan.requeue_at, None);
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Successful);
    assert_eq!(measurements_due(&sim.rollout, &channels, &bundles, t(5000)), []);
}

#[test]
fn the_status_keeps_the_last_ten_measurements_and_counts_each_once() {
    let mut sim = Sim::new(background("rollback", vec![metric("error-rate", json!({}))]));
    sim.at(0);
    for minute in 1..=12 {
        sim.measure(minute * 60, &[("error-rate", number(minute as f64 / 1000.0))]);
    }
    let status = sim.metric("error-rate");
    assert_eq!((status.measurements, status.successful), (12, 12));
    assert_eq!(status.last_measurements.len(), KEPT_MEASUREMENTS);
    assert_eq!(status.last_measurements[0].value.as_deref(), Some("0.003"));
    assert_eq!(status.last_measurements[9].value.as_deref(), Some("0.012"));
    assert_eq!(status.last_measurements[9].measured_at, Time(t(720)));
    assert_eq!(status.last_measurements[9].phase, MeasurementPhase::Successful);
    // A measurement brought twice (no newer than the last one) is not counted again.
    sim.measurements = vec![Measured {
        metric: "error-rate".to_owned(),
        at: t(720),
        value: number(0.5),
    }];
    sim.at(721);
    assert_eq!(sim.metric("error-rate").measurements, 12);
    // A measurement of a metric the spec does not name is ignored.
    sim.measurements = vec![Measured {
        metric: "gone".to_owned(),
        at: t(722),
        value: number(0.5),
    }];
    sim.at(722);
    assert_eq!(sim.status().metrics.len(), 1);
}

// ---------------------------------------------------------------- acting

#[test]
fn a_metric_failed_past_its_limit_rolls_back_naming_the_metric_and_its_value() {
    let mut sim = Sim::new(background(
        "rollback",
        vec![metric("error-rate", json!({"failureLimit": 1}))],
    ));
    sim.at(0);
    let (_, plan) = sim.measure(60, &[("error-rate", number(0.2))]);
    assert_eq!(
        reasons(&plan),
        Vec::<&str>::new(),
        "one failure is within the limit"
    );
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Running);
    assert_eq!(sim.position(), (Some(Paused), 1, 20));
    let (_, plan) = sim.measure(120, &[("error-rate", number(0.3))]);
    assert_eq!(reasons(&plan), [reason::ABORTED]);
    assert_eq!(plan.events[0].kind, EventKind::Warning);
    assert_eq!(sim.position(), (Some(Aborted), 1, 0));
    let message = sim.status().message.clone().unwrap_or_default();
    assert!(
        message.contains("metric error-rate failed 2 times (failureLimit 1); last value 0.3 (successCondition result < 0.05)"),
        "{message}"
    );
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Failed);
    assert_kstatus(&plan, "False", "False", "True");
    // Aborted: nothing is measured any more; a retry starts the counts again.
    let (channels, bundles) = world();
    assert_eq!(measurements_due(&sim.rollout, &channels, &bundles, t(600)), []);
    sim.command(annotation::RETRY, "1");
    let (_, plan) = sim.measure(600, &[]);
    assert_eq!(reasons(&plan)[0], reason::RETRIED);
    let fresh = sim.metric("error-rate");
    assert_eq!(
        (fresh.phase, fresh.measurements, fresh.failed),
        (MetricPhase::Running, 0, 0)
    );
    assert_eq!(fresh.last_measurements, []);
    assert_eq!(plan.requeue_at, Some(t(660)));
}

#[test]
fn with_the_pause_action_a_failed_metric_waits_for_a_person_and_fails_again_after_a_promote() {
    let mut sim = Sim::new(measured(
        json!([{"setPercent": 20}, {"pause": {"duration": "1h"}}, {"setPercent": 100}]),
        "pause",
        vec![metric("error-rate", json!({}))],
    ));
    sim.at(0);
    let (_, plan) = sim.measure(60, &[("error-rate", number(0.2))]);
    assert_eq!(reasons(&plan), [reason::ANALYSIS_FAILED]);
    assert_eq!(plan.events[0].kind, EventKind::Warning);
    assert!(
        plan.events[0].note.contains("metric error-rate failed 1 times"),
        "{}",
        plan.events[0].note
    );
    assert_eq!(sim.pauses(), [reason::PAUSE_STEP, reason::ANALYSIS_FAILED]);
    assert_kstatus(&plan, "False", "False", "True");
    let message = sim.status().message.clone().unwrap_or_default();
    assert!(
        message
            .starts_with("Paused by the analysis at step 2 of 3: metric error-rate failed (last value 0.2)"),
        "{message}"
    );
    // Still failing: no second pause, no second event.
    let (_, plan) = sim.measure(120, &[("error-rate", number(0.3))]);
    assert_eq!(reasons(&plan), Vec::<&str>::new());
    // A person promotes; the next failure pauses again.
    sim.command(annotation::PROMOTE, "1");
    sim.at(130);
    assert_eq!(sim.position(), (Some(Completed), 3, 100));
    let mut sim = Sim::new(measured(
        json!([{"setPercent": 20}, {"pause": {"duration": "1h"}}, {"setPercent": 50}, {"pause": {}}, {"setPercent": 100}]),
        "pause",
        vec![metric("error-rate", json!({}))],
    ));
    sim.at(0);
    sim.measure(60, &[("error-rate", number(0.2))]);
    sim.command(annotation::PROMOTE, "1");
    sim.at(70);
    assert_eq!(
        sim.position(),
        (Some(Paused), 3, 50),
        "the promote lifted the analysis pause"
    );
    assert_eq!(sim.pauses(), [reason::WAITING_FOR_PROMOTION]);
    let (_, plan) = sim.measure(130, &[("error-rate", number(0.2))]);
    assert_eq!(reasons(&plan), [reason::ANALYSIS_FAILED]);
    assert_eq!(
        sim.pauses(),
        [reason::WAITING_FOR_PROMOTION, reason::ANALYSIS_FAILED]
    );
}

#[test]
fn inconclusive_measurements_past_their_limit_pause_for_a_person() {
    let mut sim = Sim::new(background(
        "rollback",
        vec![metric(
            "error-rate",
            json!({"failureCondition": "result > 0.1", "inconclusiveLimit": 1}),
        )],
    ));
    sim.at(0);
    let (_, plan) = sim.measure(60, &[("error-rate", number(0.07))]);
    assert_eq!(reasons(&plan), Vec::<&str>::new());
    assert_eq!(sim.metric("error-rate").inconclusive, 1);
    let (_, plan) = sim.measure(120, &[("error-rate", number(0.08))]);
    assert_eq!(reasons(&plan), [reason::ANALYSIS_INCONCLUSIVE]);
    assert_eq!(plan.events[0].kind, EventKind::Warning);
    assert!(sim.pauses().contains(&reason::ANALYSIS_INCONCLUSIVE));
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Inconclusive);
    assert_eq!(
        desired(&plan, condition::STALLED).reason,
        reason::ANALYSIS_INCONCLUSIVE
    );
    let message = sim.status().message.clone().unwrap_or_default();
    assert!(
        message.contains("metric error-rate is inconclusive (last value 0.08)"),
        "{message}"
    );
    // Inconclusive never rolls back, even with the rollback action.
    sim.measure(180, &[("error-rate", number(0.09))]);
    assert_eq!(sim.status().phase, Some(Paused));
}

#[test]
fn provider_errors_past_their_limit_pause_never_abort_and_the_pause_lifts_once_measured() {
    let mut sim = Sim::new(measured(
        json!([{"setPercent": 20}, {"pause": {"duration": "1h"}}, {"setPercent": 50}, {"pause": {}}]),
        "rollback",
        vec![metric("error-rate", json!({"consecutiveErrorLimit": 2}))],
    ));
    sim.at(0);
    for minute in 1..=2 {
        let (_, plan) = sim.measure(minute * 60, &[("error-rate", outage())]);
        assert_eq!(reasons(&plan), Vec::<&str>::new(), "retried at the next interval");
        assert_eq!(plan.requeue_at, Some(t(minute * 60 + 60)));
    }
    assert_eq!(sim.metric("error-rate").consecutive_errors, 2);
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Running);
    let (_, plan) = sim.measure(180, &[("error-rate", outage())]);
    assert_eq!(reasons(&plan), [reason::METRICS_UNAVAILABLE]);
    assert_eq!(plan.events[0].kind, EventKind::Warning);
    assert!(
        plan.events[0].note.contains("connection refused"),
        "{}",
        plan.events[0].note
    );
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Error);
    assert_eq!(
        sim.metric("error-rate")
            .last_measurements
            .last()
            .and_then(|m| m.message.as_deref()),
        Some("Get http://prometheus.monitoring:9090/api/v1/query: connection refused")
    );
    // Reconciling, not Stalled: it goes on by itself.
    assert_kstatus(&plan, "False", "True", "False");
    assert_eq!(
        desired(&plan, condition::PAUSED).reason,
        reason::METRICS_UNAVAILABLE
    );
    let message = sim.status().message.clone().unwrap_or_default();
    assert!(
        message.contains("metric error-rate cannot be measured (Get http://prometheus.monitoring:9090/api/v1/query: connection refused)"),
        "{message}"
    );
    // A long outage: the pause step's hour passes, nothing rises, nothing aborts.
    for minute in 4..=70 {
        let (_, plan) = sim.measure(minute * 60, &[("error-rate", outage())]);
        assert!(!reasons(&plan).contains(&reason::ABORTED));
    }
    assert_eq!(sim.position(), (Some(Paused), 2, 20));
    assert_eq!(sim.metric("error-rate").consecutive_errors, 70);
    // The provider answers again: the pause lifts by itself and the rollout goes on.
    let (_, plan) = sim.measure(71 * 60, &[("error-rate", number(0.01))]);
    assert_eq!(
        reasons(&plan),
        [
            reason::METRICS_RECOVERED,
            reason::PERCENT_INCREASED,
            reason::WAITING_FOR_PROMOTION
        ]
    );
    assert_eq!(sim.position(), (Some(Paused), 3, 50));
    assert_eq!(plan.events[0].kind, EventKind::Normal);
    assert_eq!(sim.metric("error-rate").phase, MetricPhase::Running);
    assert_eq!(sim.metric("error-rate").consecutive_errors, 0);
    assert_eq!(sim.metric("error-rate").errors, 70);
}

#[test]
fn a_dry_run_metric_is_measured_and_reported_but_never_acts() {
    let mut sim = Sim::new(measured(
        json!([{"setPercent": 20}, {"analysis": {}}, {"setPercent": 100}]),
        "rollback",
        vec![
            metric("error-rate", json!({"dryRun": true})),
            metric("timeouts", json!({"dryRun": true, "consecutiveErrorLimit": 0})),
        ],
    ));
    sim.figures = counts(100, 0);
    sim.at(0);
    let (_, plan) = sim.measure(60, &[("error-rate", number(0.5)), ("timeouts", outage())]);
    assert_eq!(
        reasons(&plan),
        [
            reason::DRY_RUN_METRIC_FAILED,
            reason::DRY_RUN_METRIC_FAILED,
            reason::ANALYSIS_PASSED,
            reason::PERCENT_INCREASED,
            reason::ROLLOUT_COMPLETED
        ],
        "{:#?}",
        plan.events
    );
    assert!(
        plan.events[0]
            .note
            .starts_with("Dry run: metric error-rate failed 1 times"),
        "{}",
        plan.events[0].note
    );
    assert!(
        plan.events[1].note.contains("connection refused"),
        "{}",
        plan.events[1].note
    );
    assert_eq!(sim.position(), (Some(Completed), 3, 100));
    let error_rate = sim.metric("error-rate");
    assert!(error_rate.dry_run);
    assert_eq!((error_rate.phase, error_rate.failed), (MetricPhase::Failed, 1));
    assert_eq!(sim.metric("timeouts").phase, MetricPhase::Error);
}

#[test]
fn a_dry_run_reports_each_crossing_once() {
    let mut sim = Sim::new(background(
        "rollback",
        vec![metric("error-rate", json!({"dryRun": true}))],
    ));
    sim.at(0);
    let (_, plan) = sim.measure(60, &[("error-rate", number(0.5))]);
    assert_eq!(reasons(&plan), [reason::DRY_RUN_METRIC_FAILED]);
    let (_, plan) = sim.measure(120, &[("error-rate", number(0.5))]);
    assert_eq!(reasons(&plan), Vec::<&str>::new());
    assert_eq!(sim.position(), (Some(Paused), 1, 20));
    assert_eq!(sim.pauses(), [reason::WAITING_FOR_PROMOTION]);
}

#[test]
fn an_analysis_step_waits_for_count_measurements_taken_since_it_began() {
    let mut sim = Sim::new(measured(
        json!([{"setPercent": 20}, {"pause": {"duration": "2m"}}, {"analysis": {}}, {"setPercent": 60}, {"pause": {}}]),
        "rollback",
        vec![
            metric("error-rate", json!({"count": 3})),
            metric("latency", json!({"dryRun": true, "count": 100})),
        ],
    ));
    sim.figures = counts(100, 0);
    sim.at(0);
    let ok = [("error-rate", number(0.01)), ("latency", number(0.01))];
    sim.measure(60, &ok);
    // The pause ends at 2m: the measurements of the pause do not count for the step.
    let (_, plan) = sim.measure(120, &ok);
    assert_eq!(
        reasons(&plan),
        [reason::PAUSE_ENDED, reason::WAITING_FOR_ANALYSIS]
    );
    assert_eq!(sim.position(), (Some(Progressing), 2, 20));
    assert_eq!(sim.metric("error-rate").measurements, 2);
    assert_eq!(sim.metric("error-rate").step_measurements, 0);
    let message = sim.status().message.clone().unwrap_or_default();
    assert!(
        message.starts_with("step 3 of 5 waits for metric error-rate to be measured 3 times (0 so far)"),
        "{message}"
    );
    sim.measure(180, &ok);
    // An error does not count.
    sim.measure(240, &[("error-rate", outage()), ("latency", number(0.01))]);
    let (_, plan) = sim.measure(300, &ok);
    assert_eq!(reasons(&plan), Vec::<&str>::new());
    assert_eq!(sim.metric("error-rate").step_measurements, 2);
    assert_eq!(plan.requeue_at, Some(t(360)));
    let (_, plan) = sim.measure(360, &ok);
    assert_eq!(
        reasons(&plan),
        [
            reason::ANALYSIS_PASSED,
            reason::PERCENT_INCREASED,
            reason::WAITING_FOR_PROMOTION
        ]
    );
    assert!(
        plan.events[0].note.contains("metrics: error-rate 0.01"),
        "{}",
        plan.events[0].note
    );
    assert_eq!(sim.position(), (Some(Paused), 4, 60));
}

#[test]
fn an_analysis_step_also_waits_for_the_device_failure_rate_and_never_passes_a_failed_metric() {
    // Enough measurements, too few device attempts: it waits for both and says so.
    let steps = json!([{"setPercent": 20}, {"analysis": {}}, {"setPercent": 60}]);
    let mut sim = Sim::new(measured(
        steps.clone(),
        "rollback",
        vec![metric("error-rate", json!({}))],
    ));
    sim.rollout.spec.analysis.min_attempts = 50;
    sim.figures = counts(10, 0);
    sim.at(0);
    let (_, plan) = sim.measure(60, &[("error-rate", number(0.01))]);
    assert_eq!(reasons(&plan), Vec::<&str>::new());
    assert_eq!(sim.position(), (Some(Progressing), 1, 20));
    let message = sim.status().message.clone().unwrap_or_default();
    assert!(
        message.starts_with("step 2 of 3 waits for at least 50 attempts (10 so far)"),
        "{message}"
    );
    sim.figures = counts(60, 0);
    let (_, plan) = sim.measure(120, &[("error-rate", number(0.01))]);
    assert_eq!(reasons(&plan)[0], reason::ANALYSIS_PASSED);
    // A metric inconclusive within its limit stays Running; past its limit, the step waits.
    let mut sim = Sim::new(measured(
        steps,
        "rollback",
        vec![metric(
            "error-rate",
            json!({"failureCondition": "result > 0.1", "inconclusiveLimit": 0}),
        )],
    ));
    sim.figures = counts(100, 0);
    sim.at(0);
    sim.measure(60, &[("error-rate", number(0.07))]);
    assert_eq!(sim.position(), (Some(Paused), 1, 20));
    sim.measure(120, &[("error-rate", number(0.01))]);
    assert_eq!(sim.position(), (Some(Paused), 1, 20), "still paused for a person");
}

#[test]
fn a_metric_removed_from_the_spec_leaves_the_status_and_lifts_its_outage_pause() {
    let mut sim = Sim::new(background(
        "rollback",
        vec![
            metric("error-rate", json!({"consecutiveErrorLimit": 0})),
            metric("latency", json!({})),
        ],
    ));
    sim.at(0);
    let (_, plan) = sim.measure(60, &[("error-rate", outage()), ("latency", number(0.01))]);
    assert!(sim.pauses().contains(&reason::METRICS_UNAVAILABLE));
    // The outage is the headline, above the wait for a person.
    assert_eq!(
        desired(&plan, condition::PAUSED).reason,
        reason::METRICS_UNAVAILABLE
    );
    assert!(
        sim.status()
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("metric error-rate cannot be measured"),
        "{:?}",
        sim.status().message
    );
    sim.rollout.spec.analysis.metrics.remove(0);
    let plan = sim.at(61);
    assert_eq!(reasons(&plan), [reason::METRICS_RECOVERED]);
    assert_eq!(sim.status().metrics.len(), 1);
    assert_eq!(sim.status().metrics[0].name, "latency");
    assert_eq!(sim.pauses(), [reason::WAITING_FOR_PROMOTION]);
}

#[test]
fn nothing_is_measured_for_an_invalid_rollout_and_stable_reads_builtin_on_the_builtin_assets() {
    let stable_query = metric(
        "error-rate",
        json!({"prometheus": {"query": "errors{stable=\"{{stable}}\"}"}}),
    );
    let mut sim = Sim::new(background("rollback", vec![stable_query]));
    sim.stable = None;
    sim.at(0);
    let (channels, bundles) = world();
    let requests = measurements_due(&sim.rollout, &channels, &bundles, t(60));
    match &requests[..] {
        [request] => match &request.provider {
            ProviderRequest::Prometheus { query, .. } => assert_eq!(query, "errors{stable=\"builtin\"}"),
            other => panic!("a Prometheus request, not {other:?}"),
        },
        other => panic!("one request, not {other:?}"),
    }
    // The candidate is gone, or the spec no longer parses: nothing is measured.
    let without_candidate: Vec<Bundle> = bundles
        .iter()
        .filter(|b| b.metadata.name.as_deref() != Some(CANDIDATE))
        .cloned()
        .collect();
    assert_eq!(
        measurements_due(&sim.rollout, &channels, &without_candidate, t(60)),
        []
    );
    sim.rollout.spec.analysis.metrics[0].success_condition = Some("result <".to_owned());
    assert_eq!(measurements_due(&sim.rollout, &channels, &bundles, t(60)), []);
}
