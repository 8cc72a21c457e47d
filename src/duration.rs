//! Go-style durations as the CRDs write them: `45s`, `30m`, `1h`, `1h30m`, `500ms`.

use std::time::Duration;

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("the duration is empty")]
    Empty,
    /// A term does not start with digits (`position` counts from 1).
    #[error("expected a number at position {position}")]
    ExpectedNumber {
        /// Where the number was expected.
        position: usize,
    },
    /// A term's number does not fit in 64 bits.
    #[error("a number is too large")]
    NumberTooLarge,
    /// The text ends after a number.
    #[error("the number {number} has no unit (h, m, s or ms)")]
    MissingUnit {
        /// The number without a unit.
        number: u64,
    },
    /// A term's unit is none of `h`, `m`, `s`, `ms` (`position` counts from 1).
    #[error("unknown unit at position {position} (expected h, m, s or ms)")]
    UnknownUnit {
        /// Where the unit starts.
        position: usize,
    },
    /// The sum overflows 64 bits of milliseconds.
    #[error("the duration is too long")]
    TooLong,
}

/// Parses one or more `<digits><unit>` terms (units `h`, `m`, `s`, `ms`), summed: exactly the
/// grammar of [`crate::api::common::DURATION_RULE`] (`^([0-9]+(ms|s|m|h))+$`). No sign, no
/// fractions, no spaces. The error names the problem on bad input or overflow.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = text.as_bytes();
    let mut total_ms: u64 = 0;
    let mut position = 0;
    while position < bytes.len() {
        let start = position;
        while position < bytes.len() && bytes[position].is_ascii_digit() {
            position += 1;
        }
        if position == start {
            return Err(DurationError::ExpectedNumber { position: start + 1 });
        }
        let number: u64 = text[start..position]
            .parse()
            .map_err(|_| DurationError::NumberTooLarge)?;
        let unit_ms: u64 = match &bytes[position..] {
            [b'm', b's', ..] => {
                position += 2;
                1
            }
            [b'h', ..] => {
                position += 1;
                3_600_000
            }
            [b'm', ..] => {
                position += 1;
                60_000
            }
            [b's', ..] => {
                position += 1;
                1_000
            }
            [] => return Err(DurationError::MissingUnit { number }),
            _ => {
                return Err(DurationError::UnknownUnit {
                    position: position + 1,
                });
            }
        };
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or(DurationError::TooLong)?;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations() {
        for (text, seconds) in [
            ("45s", 45),
            ("30m", 1800),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2h0m5s", 7205),
            ("90m", 5400),
            ("0s", 0),
            ("1m1m", 120),
            ("007s", 7),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(seconds)), "{text}");
        }
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s250ms"), Ok(Duration::from_millis(90_250)));
    }

    #[test]
    fn invalid_durations_say_why() {
        for (text, message) in [
            ("", "empty"),
            ("h", "expected a number at position 1"),
            ("10", "no unit"),
            ("10d", "unknown unit at position 3"),
            ("1h 30m", "expected a number at position 3"),
            ("-5s", "expected a number"),
            ("1.5h", "unknown unit"),
            ("1H", "unknown unit"),
            ("99999999999999999999999s", "too large"),
            ("9999999999999999h", "too long"),
        ] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.to_string().contains(message), "{text:?}: {error}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        for text in ["ms", "1msm", "1m s", "\u{e9}1s", "1s\u{e9}", "1\u{e9}", "1m\u{0}"] {
            let _ = parse_duration(text);
        }
        assert!(parse_duration("1msm").is_err());
    }
}
