//! What `/stats` answers, and which time an event is counted at: wire rules of the plugin's
//! protocol, kept apart from the handler that applies them.

use serde_json::{Value, json};

use super::decode::DecodeError;

/// A day in milliseconds: stats are counted per day of the Unix epoch.
pub const DAY_MS: i64 = 86_400_000;

/// The HTTP status and JSON answer of a `/stats` request whose events were decoded as
/// `events` (each accepted, or refused with its error). A batch always gets 200 with one result
/// per event; a single event gets 400 when refused (the plugin drops it rather than retries).
pub fn stats_answer(batch: bool, events: &[Result<(), &DecodeError>]) -> (u16, Value) {
    if batch {
        let results: Vec<Value> = events
            .iter()
            .enumerate()
            .map(|(index, event)| match event {
                Ok(()) => json!({"status": "ok", "index": index}),
                Err(error) => {
                    json!({"status": "error", "error": error.code, "message": error.message, "index": index})
                }
            })
            .collect();
        return (200, json!({"status": "ok", "results": results}));
    }
    match events.first() {
        Some(Err(error)) => (400, super::encode::plain_error(error.code, &error.message)),
        _ => (200, json!({"status": "ok"})),
    }
}

/// When an event is counted: the device's own timestamp if it is plausible (not before the
/// epoch, not more than a day ahead of the server), else when the server heard of it.
pub fn counted_at(device_timestamp_ms: Option<i64>, now_ms: i64) -> i64 {
    device_timestamp_ms
        .filter(|t| (0..=now_ms + DAY_MS).contains(t))
        .unwrap_or(now_ms)
}

/// The day (since the Unix epoch) of a time in milliseconds.
pub fn day_of(at_ms: i64) -> i64 {
    at_ms / DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> DecodeError {
        DecodeError {
            code: "invalid_json_body",
            message: "action is missing".to_owned(),
        }
    }

    #[test]
    fn a_batch_answers_each_event_by_index() {
        let error = refused();
        let (status, body) = stats_answer(true, &[Ok(()), Err(&error)]);
        assert_eq!(status, 200);
        assert_eq!(body["results"][0], json!({"status": "ok", "index": 0}));
        assert_eq!(body["results"][1]["status"], "error");
        assert_eq!(body["results"][1]["index"], 1);
        assert_eq!(body["results"][1]["message"], "action is missing");
    }

    #[test]
    fn a_single_event_is_ok_or_a_400() {
        assert_eq!(stats_answer(false, &[Ok(())]), (200, json!({"status": "ok"})));
        let error = refused();
        let (status, body) = stats_answer(false, &[Err(&error)]);
        assert_eq!(status, 400);
        assert_eq!(body["message"], "action is missing");
    }

    #[test]
    fn implausible_device_times_fall_back_to_the_servers() {
        let now = 100 * DAY_MS;
        let cases = [
            (None, now),
            (Some(now - 5), now - 5),
            (Some(now + DAY_MS), now + DAY_MS),
            (Some(now + DAY_MS + 1), now),
            (Some(-1), now),
        ];
        for (device, expected) in cases {
            assert_eq!(counted_at(device, now), expected, "{device:?}");
        }
        assert_eq!(day_of(now + 5), 100);
    }
}
