//! The wire form of a monthly-active-devices request: the query string and the answer of the
//! update server's [`crate::api::constants::MONTHLY_ACTIVE_DEVICES_PATH`], written by the
//! controller and read by the server (one definition for both sides, like
//! [`crate::core::rollout::FiguresQuery`]).

use serde::{Deserialize, Serialize};

/// The App whose devices seen in the last 30 days are asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveDevicesQuery {
    /// The App's appId.
    pub app_id: String,
}

/// Why a monthly-active-devices request's parameters are refused (a 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the query must be exactly one non-empty app_id")]
pub struct ActiveDevicesQueryError;

impl ActiveDevicesQuery {
    /// The query string (`app_id=..`, form-encoded).
    pub fn to_query(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("app_id", &self.app_id)
            .finish()
    }

    /// Reads exactly one non-empty `app_id` from a query string.
    pub fn parse(query: &str) -> Result<Self, ActiveDevicesQueryError> {
        let mut pairs = form_urlencoded::parse(query.as_bytes());
        match (pairs.next(), pairs.next()) {
            (Some((key, value)), None) if key == "app_id" && !value.is_empty() => Ok(ActiveDevicesQuery {
                app_id: value.into_owned(),
            }),
            _ => Err(ActiveDevicesQueryError),
        }
    }
}

/// The answer: how many devices of the App were seen in the last 30 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveDevicesAnswer {
    /// The count (never negative).
    pub devices: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_back_as_written() {
        let query = ActiveDevicesQuery {
            app_id: "com.example.shop & co".into(),
        };
        let text = query.to_query();
        assert_eq!(text, "app_id=com.example.shop+%26+co");
        assert_eq!(ActiveDevicesQuery::parse(&text), Ok(query));
    }

    #[test]
    fn anything_but_one_non_empty_app_id_is_refused() {
        for query in ["", "app_id=", "app=x", "app_id=a&app_id=b", "app_id=a&channel=b"] {
            assert_eq!(
                ActiveDevicesQuery::parse(query),
                Err(ActiveDevicesQueryError),
                "{query}"
            );
        }
    }

    #[test]
    fn the_answer_is_one_field() {
        let answer = ActiveDevicesAnswer { devices: 7 };
        assert_eq!(serde_json::to_string(&answer).unwrap(), r#"{"devices":7}"#);
    }
}
