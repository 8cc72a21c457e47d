//! The Prometheus provider: an instant query (`GET {address}/api/v1/query?query=...`) and the
//! reading of its JSON answer into the value CEL conditions see as `result`.
//!
//! - a scalar, or an instant vector of one series, is a number; a vector of several series is a
//!   list, in the order Prometheus gives them (a query can fix it with `sort()`);
//! - an empty vector is an error, not an empty list: a typo in a label selector, or a series
//!   that does not exist yet, would otherwise pass `result.all(x, x < 0.05)` vacuously and fail
//!   `result[0] < 0.05` with a CEL error; an error is retried and never acts (past
//!   `consecutiveErrorLimit` it pauses). A query for which no series means zero says so itself
//!   with `or vector(0)`;
//! - NaN (a ratio over no traffic, 0/0) is an error for the same reason: every comparison with
//!   NaN is false, so a lone `successCondition` would fail the rollout for want of traffic;
//! - `+Inf` and `-Inf` are numbers (CEL compares them as expected: an infinite error rate fails
//!   `result < 0.05`);
//! - a range vector (matrix) or a string is an error that says so.

use serde::Deserialize;
use serde_json::Value;

use super::MeasureError;
use crate::core::rollout::measurement::MetricValue;

/// The URL of an instant query of `query` on the server at `address` (which may have a path
/// prefix, such as `http://monitoring/prometheus`).
pub(super) fn query_url(address: &str, query: &str) -> Result<reqwest::Url, MeasureError> {
    let mut url = reqwest::Url::parse(address).map_err(|error| MeasureError::Url {
        url: address.to_owned(),
        reason: error.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(MeasureError::Url {
            url: address.to_owned(),
            reason: "the scheme is not http or https".to_owned(),
        });
    }
    let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url.query_pairs_mut().append_pair("query", query);
    Ok(url)
}

/// The answer of the query API.
#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Value,
}

/// One series of an instant vector.
#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: serde_json::Map<String, Value>,
    /// `[time, "value"]`.
    value: (Value, String),
}

/// The value of an answer of the query API with HTTP status `status`. Prometheus answers a bad
/// query with 400 or 422 and a JSON error, which is read before the status.
pub(super) fn read_answer(status: u16, body: &[u8]) -> Result<MetricValue, MeasureError> {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(error) if (200..300).contains(&status) => {
            return Err(MeasureError::Unexpected(format!(
                "the answer is not a Prometheus query result ({error}): {}",
                super::excerpt(body)
            )));
        }
        Err(_) => {
            return Err(MeasureError::Status {
                code: status,
                excerpt: super::excerpt(body),
            });
        }
    };
    if answer.status != "success" {
        return Err(MeasureError::Prometheus {
            error_type: answer.error_type.unwrap_or_else(|| answer.status.clone()),
            message: answer.error.unwrap_or_default(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(MeasureError::Status {
            code: status,
            excerpt: super::excerpt(body),
        });
    }
    let data = answer.data.ok_or_else(|| {
        MeasureError::Unexpected("the Prometheus answer has status success but no data".to_owned())
    })?;
    match data.result_type.as_str() {
        "scalar" => {
            let (_, value): (Value, String) = serde_json::from_value(data.result).map_err(|error| {
                MeasureError::Unexpected(format!("the scalar is not [time, \"value\"]: {error}"))
            })?;
            sample(&value, "the scalar").map(MetricValue::Number)
        }
        "vector" => {
            let series: Vec<Series> = serde_json::from_value(data.result).map_err(|error| {
                MeasureError::Unexpected(format!("the vector is not a list of samples: {error}"))
            })?;
            let values = series
                .iter()
                .map(|one| sample(&one.value.1, &format!("the series {}", labels(&one.metric))))
                .collect::<Result<Vec<f64>, MeasureError>>()?;
            match values.as_slice() {
                [] => Err(MeasureError::NoData),
                [one] => Ok(MetricValue::Number(*one)),
                _ => Ok(MetricValue::List(values)),
            }
        }
        "matrix" => Err(MeasureError::Unexpected(
            "the query returned a range vector (matrix); an analysis needs an instant value, such as \
             rate(metric[5m]) rather than metric[5m]"
                .to_owned(),
        )),
        other => Err(MeasureError::Unexpected(format!(
            "the query returned a {other}, not a number or an instant vector"
        ))),
    }
}

/// A sample's value: Prometheus writes numbers as strings (`"0.5"`, `"NaN"`, `"+Inf"`).
fn sample(text: &str, what: &str) -> Result<f64, MeasureError> {
    let value: f64 = text
        .parse()
        .map_err(|_| MeasureError::Unexpected(format!("{what} has the value {text:?}, not a number")))?;
    if value.is_nan() {
        return Err(MeasureError::NotANumberValue {
            what: what.to_owned(),
        });
    }
    Ok(value)
}

/// A series' labels as PromQL writes them: `{code="500", job="api"}`.
fn labels(metric: &serde_json::Map<String, Value>) -> String {
    let pairs: Vec<String> = metric
        .iter()
        .map(|(name, value)| {
            format!(
                "{name}={}",
                value
                    .as_str()
                    .map_or_else(|| value.to_string(), |v| format!("{v:?}"))
            )
        })
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(samples: &[&str]) -> String {
        let series: Vec<String> = samples
            .iter()
            .enumerate()
            .map(|(i, v)| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1700000000.5,"{v}"]}}"#))
            .collect();
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        )
    }

    #[test]
    fn answers_read_as_numbers_lists_or_errors() {
        let cases: Vec<(&str, u16, String, Result<MetricValue, &str>)> = vec![
            (
                "a scalar",
                200,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"0.25"]}}"#.into(),
                Ok(MetricValue::Number(0.25)),
            ),
            ("one series", 200, vector(&["0.5"]), Ok(MetricValue::Number(0.5))),
            (
                "several series",
                200,
                vector(&["1", "2", "3e-3"]),
                Ok(MetricValue::List(vec![1.0, 2.0, 0.003])),
            ),
            ("+Inf", 200, vector(&["+Inf"]), Ok(MetricValue::Number(f64::INFINITY))),
            ("-Inf", 200, vector(&["-Inf"]), Ok(MetricValue::Number(f64::NEG_INFINITY))),
            ("an empty vector", 200, vector(&[]), Err("the query returned no data")),
            ("NaN", 200, vector(&["NaN"]), Err("the series {pod=\"p0\"} is NaN")),
            ("NaN among several", 200, vector(&["1", "NaN"]), Err("the series {pod=\"p1\"} is NaN")),
            (
                "bad PromQL",
                400,
                r#"{"status":"error","errorType":"bad_data","error":"1:4: parse error: unexpected end of input"}"#.into(),
                Err("Prometheus refused the query (bad_data): 1:4: parse error: unexpected end of input"),
            ),
            (
                "a range vector",
                200,
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#.into(),
                Err("the query returned a range vector (matrix)"),
            ),
            (
                "a string",
                200,
                r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#.into(),
                Err("the query returned a string, not a number"),
            ),
            ("a proxy's error page", 502, "<html>Bad Gateway</html>".into(), Err("HTTP 502: <html>Bad Gateway</html>")),
            ("not Prometheus", 200, "<html>login</html>".into(), Err("the answer is not a Prometheus query result")),
            (
                "a sample that is no number",
                200,
                vector(&["high"]),
                Err("the series {pod=\"p0\"} has the value \"high\", not a number"),
            ),
        ];
        for (name, status, body, want) in cases {
            let got = read_answer(status, body.as_bytes()).map_err(|e| e.to_string());
            match (&got, &want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(got), Err(want)) => assert!(
                    got.starts_with(want),
                    "{name}: {got:?} does not start with {want:?}"
                ),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_query_url_keeps_the_address_path_and_encodes_the_query() {
        let url = query_url(
            "http://127.0.0.1:9090/prometheus/",
            r#"sum(rate(x{code=~"5.."}[5m])) / 2"#,
        )
        .unwrap();
        assert_eq!(url.path(), "/prometheus/api/v1/query");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [(
                "query".to_owned(),
                r#"sum(rate(x{code=~"5.."}[5m])) / 2"#.to_owned()
            )]
        );
        assert!(query_url("not a url", "up").is_err());
        assert!(query_url("ftp://example.com", "up").is_err());
    }
}
