//! The wire form of a [`FiguresQuery`]: the query string of the update server's
//! [`crate::api::constants::ROLLOUT_FIGURES_PATH`], written by the controller and read by the
//! server (one definition for both sides).

use super::FiguresQuery;

/// Why a figures request's parameters are refused (a 400 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FiguresQueryError {
    /// A required parameter is absent or empty.
    #[error("the query parameter {0} is missing or empty")]
    Missing(&'static str),
    /// A parameter is given twice.
    #[error("the query parameter {0} is given more than once")]
    Repeated(String),
    /// A parameter this endpoint does not know (a typo would otherwise be silently ignored).
    #[error("unknown query parameter {0:?}; expected app_id, channel, version and since_ms")]
    Unknown(String),
    /// `since_ms` is not a non-negative integer.
    #[error("since_ms {0:?} is not a time in milliseconds since the epoch (a non-negative integer)")]
    BadSince(String),
}

impl FiguresQuery {
    /// The query string (`app_id=..&channel=..&version=..&since_ms=..`, form-encoded).
    pub fn to_query(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("app_id", &self.app_id)
            .append_pair("channel", &self.channel)
            .append_pair("version", &self.version)
            .append_pair("since_ms", &self.since_ms.to_string())
            .finish()
    }

    /// Reads `app_id`, `channel`, `version` and `since_ms` from a query string.
    pub fn parse(query: &str) -> Result<Self, FiguresQueryError> {
        let (mut app_id, mut channel, mut version, mut since) = (None, None, None, None);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "app_id" => &mut app_id,
                "channel" => &mut channel,
                "version" => &mut version,
                "since_ms" => &mut since,
                other => return Err(FiguresQueryError::Unknown(other.to_owned())),
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(FiguresQueryError::Repeated(key.into_owned()));
            }
        }
        let required = |value: Option<String>, name: &'static str| {
            value
                .filter(|value| !value.is_empty())
                .ok_or(FiguresQueryError::Missing(name))
        };
        let app_id = required(app_id, "app_id")?;
        let channel = required(channel, "channel")?;
        let version = required(version, "version")?;
        let since = required(since, "since_ms")?;
        let since_ms = since
            .parse::<i64>()
            .ok()
            .filter(|since| *since >= 0)
            .ok_or(FiguresQueryError::BadSince(since))?;
        Ok(FiguresQuery {
            app_id,
            channel,
            version,
            since_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_back_as_written() {
        let query = FiguresQuery {
            app_id: "com.example.shop".into(),
            channel: "prod & more".into(),
            version: "1.2.0+build 7".into(),
            since_ms: 1_700_000_000_123,
        };
        let text = query.to_query();
        assert_eq!(
            text,
            "app_id=com.example.shop&channel=prod+%26+more&version=1.2.0%2Bbuild+7&since_ms=1700000000123"
        );
        assert_eq!(FiguresQuery::parse(&text), Ok(query));
    }

    #[test]
    fn a_full_query_parses() {
        assert_eq!(
            FiguresQuery::parse(
                "app_id=com.example.shop&channel=production&version=1.5.0%2Bbuild.2&since_ms=17"
            ),
            Ok(FiguresQuery {
                app_id: "com.example.shop".into(),
                channel: "production".into(),
                version: "1.5.0+build.2".into(),
                since_ms: 17,
            })
        );
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let cases = [
            ("", FiguresQueryError::Missing("app_id")),
            (
                "app_id=a&channel=c&version=v",
                FiguresQueryError::Missing("since_ms"),
            ),
            (
                "app_id=a&channel=&version=v&since_ms=1",
                FiguresQueryError::Missing("channel"),
            ),
            (
                "app_id=a&channel=c&since_ms=1",
                FiguresQueryError::Missing("version"),
            ),
            (
                "app_id=a&app_id=b&channel=c&version=v&since_ms=1",
                FiguresQueryError::Repeated("app_id".into()),
            ),
            (
                "app_id=a&chanel=c&version=v&since_ms=1",
                FiguresQueryError::Unknown("chanel".into()),
            ),
            (
                "app_id=a&channel=c&version=v&since_ms=yesterday",
                FiguresQueryError::BadSince("yesterday".into()),
            ),
            (
                "app_id=a&channel=c&version=v&since_ms=-5",
                FiguresQueryError::BadSince("-5".into()),
            ),
            (
                "app_id=a&channel=c&version=v&since_ms=99999999999999999999",
                FiguresQueryError::BadSince("99999999999999999999".into()),
            ),
        ];
        for (query, expected) in cases {
            assert_eq!(FiguresQuery::parse(query), Err(expected), "{query}");
        }
        assert!(
            FiguresQueryError::Missing("since_ms")
                .to_string()
                .contains("since_ms")
        );
    }
}
