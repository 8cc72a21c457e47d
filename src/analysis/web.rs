//! The web provider: a JSON answer and the value at a JSONPath in it (RFC 9535, through
//! `jsonpath-rust`, the crate kube already brings).
//!
//! - a JSON number, or a string that reads as one (`"0.02"`: many services quote figures), is a
//!   number;
//! - an array of such numbers, or a path that selects several of them (`$.regions[*].rate`), is
//!   a list;
//! - anything else is an error naming the path and what is there: nothing, an object, a string
//!   that is not a number, `null`, an empty list (for the reason an empty Prometheus vector is
//!   one: see [`super::prometheus`]), or NaN;
//! - a path written as kubectl and Argo Rollouts write it, in braces (`{$.data.rate}`), is read
//!   without them.

use jsonpath_rust::JsonPath;
use serde_json::Value;

use super::MeasureError;
use crate::core::rollout::measurement::MetricValue;

/// The value at `json_path` in an answer with HTTP status `status`, content type
/// `content_type` and body `body`.
pub(super) fn read_answer(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    json_path: &str,
) -> Result<MetricValue, MeasureError> {
    if !(200..300).contains(&status) {
        return Err(MeasureError::Status {
            code: status,
            excerpt: super::excerpt(body),
        });
    }
    let answer: Value = serde_json::from_slice(body).map_err(|_| MeasureError::NotJson {
        content_type: content_type.unwrap_or("none").to_owned(),
        excerpt: super::excerpt(body),
    })?;
    value_at(&answer, json_path)
}

/// The value at `json_path` in `answer`.
fn value_at(answer: &Value, json_path: &str) -> Result<MetricValue, MeasureError> {
    let trimmed = json_path.trim();
    let path = trimmed
        .strip_prefix('{')
        .and_then(|inner| inner.strip_suffix('}'))
        .unwrap_or(trimmed);
    let found = answer.query(path).map_err(|error| MeasureError::JsonPath {
        path: json_path.to_owned(),
        reason: error.to_string(),
    })?;
    let not_a_number = |found: String| MeasureError::NotANumber {
        path: json_path.to_owned(),
        found,
    };
    match found.as_slice() {
        [] => Err(MeasureError::NothingAt {
            path: json_path.to_owned(),
        }),
        [Value::Array(items)] if items.is_empty() => Err(not_a_number("an empty list".to_owned())),
        [Value::Array(items)] => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                number(item, json_path)?
                    .ok_or_else(|| not_a_number(format!("a list whose item {index} is {}", describe(item))))
            })
            .collect::<Result<Vec<f64>, MeasureError>>()
            .map(MetricValue::List),
        [one] => number(one, json_path)?
            .map(MetricValue::Number)
            .ok_or_else(|| not_a_number(describe(one))),
        several => several
            .iter()
            .enumerate()
            .map(|(index, item)| {
                number(item, json_path)?.ok_or_else(|| {
                    not_a_number(format!(
                        "{} values, of which value {index} is {}",
                        several.len(),
                        describe(item)
                    ))
                })
            })
            .collect::<Result<Vec<f64>, MeasureError>>()
            .map(MetricValue::List),
    }
}

/// `value` as a number (`None`: it is not one); NaN is an error.
fn number(value: &Value, json_path: &str) -> Result<Option<f64>, MeasureError> {
    let number = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    match number {
        Some(number) if number.is_nan() => Err(MeasureError::NotANumberValue {
            what: format!("the value at {json_path}"),
        }),
        other => Ok(other),
    }
}

/// What a JSON value is, for an error message (strings cut short).
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string {:?}", super::cut(text, 40)),
        Value::Array(items) => format!("a list of {} items", items.len()),
        Value::Object(fields) => {
            let keys: Vec<&str> = fields.keys().take(5).map(String::as_str).collect();
            let more = if fields.len() > keys.len() { ", ..." } else { "" };
            format!("an object (keys: {}{more})", keys.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_at_the_path_reads_as_a_number_a_list_or_a_clear_error() {
        let answer = serde_json::json!({
            "data": {
                "rate": 0.02,
                "quoted": " 0.5 ",
                "series": [1, "2", 3.5],
                "mixed": [1, "high"],
                "empty": [],
                "word": "green",
                "nothing": null,
                "nan": "NaN",
                "flag": true,
            },
            "regions": [{"name": "eu", "rate": 0.1}, {"name": "us", "rate": 0.3}],
        });
        let cases: Vec<(&str, Result<MetricValue, &str>)> = vec![
            ("$.data.rate", Ok(MetricValue::Number(0.02))),
            ("{$.data.rate}", Ok(MetricValue::Number(0.02))),
            ("$.data.quoted", Ok(MetricValue::Number(0.5))),
            ("$.data.series", Ok(MetricValue::List(vec![1.0, 2.0, 3.5]))),
            ("$.regions[*].rate", Ok(MetricValue::List(vec![0.1, 0.3]))),
            (
                "$.data.missing",
                Err("$.data.missing matches nothing in the answer"),
            ),
            // The first five keys, in the map's order.
            ("$.data", Err("$.data is an object (keys: ")),
            (
                "$.data.word",
                Err("$.data.word is the string \"green\", not a number or a list of numbers"),
            ),
            ("$.data.nothing", Err("$.data.nothing is null, not a number")),
            (
                "$.data.flag",
                Err("$.data.flag is the boolean true, not a number"),
            ),
            ("$.data.empty", Err("$.data.empty is an empty list, not a number")),
            (
                "$.data.mixed",
                Err("$.data.mixed is a list whose item 1 is the string \"high\""),
            ),
            (
                "$.regions[*].name",
                Err("$.regions[*].name is 2 values, of which value 0 is the string \"eu\""),
            ),
            ("$.data.nan", Err("the value at $.data.nan is NaN")),
            ("$.data[", Err("$.data[ is not a valid JSONPath")),
        ];
        for (path, want) in cases {
            let got = value_at(&answer, path).map_err(|e| e.to_string());
            match (&got, &want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{path}"),
                (Err(got), Err(want)) => assert!(
                    got.starts_with(want),
                    "{path}: {got:?} does not start with {want:?}"
                ),
                _ => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bodies_that_are_not_json_and_failed_statuses_are_errors_with_an_excerpt() {
        let html = b"<!DOCTYPE html>\n<html><body>Sign in</body></html>";
        let error = read_answer(200, Some("text/html; charset=utf-8"), html, "$.rate").unwrap_err();
        assert_eq!(
            error.to_string(),
            "the answer is not JSON (content type text/html; charset=utf-8): <!DOCTYPE html> <html><body>Sign in</body></html>"
        );
        let error = read_answer(
            500,
            Some("application/json"),
            br#"{"error":"database down"}"#,
            "$.rate",
        )
        .unwrap_err();
        assert_eq!(error.to_string(), r#"HTTP 500: {"error":"database down"}"#);
        assert_eq!(
            read_answer(200, None, br#"{"rate": 1}"#, "$.rate").unwrap(),
            MetricValue::Number(1.0)
        );
    }
}
