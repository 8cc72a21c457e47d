//! One line for an error and its sources, for logs, events and status messages.

/// An error and its sources on one line (each source added only when the message does not
/// already say it), for logs, events and status messages.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
