//! The Capgo updater plugin's wire protocol: decoding what devices send and encoding what they
//! receive. Pure: bytes and JSON in, typed values out (and back).

pub mod decode;
pub mod encode;
pub mod stats_reply;

/// What a `/channel_self` request asks, by its HTTP method (the plugin's `setChannel` POSTs,
/// `getChannel` PUTs, `listChannels` GETs, `unsetChannel` DELETEs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOperation {
    /// Set the device's channel.
    Set,
    /// Read the device's channel.
    Get,
    /// List the channels a device may choose.
    List,
    /// Forget the channel the device set.
    Unset,
}

impl ChannelOperation {
    /// The operation of a method name; None for a method the route does not take.
    pub fn of_method(method: &str) -> Option<ChannelOperation> {
        match method {
            "POST" => Some(ChannelOperation::Set),
            "PUT" => Some(ChannelOperation::Get),
            "GET" => Some(ChannelOperation::List),
            "DELETE" => Some(ChannelOperation::Unset),
            _ => None,
        }
    }
}

/// The longest body accepted by `/updates` and `/channel_self` (an info object is < 1 KiB).
pub const MAX_INFO_BODY: usize = 64 * 1024;
/// The longest body accepted by `/stats` (a batch holds at most 200 events).
pub const MAX_STATS_BODY: usize = 4 * 1024 * 1024;
/// The most events accepted in one stats batch (the plugin's queue holds 200).
pub const MAX_STATS_EVENTS: usize = 1_000;

#[cfg(test)]
mod tests {
    use super::ChannelOperation;

    #[test]
    fn channel_methods_map_to_their_operations() {
        let cases = [
            ("POST", Some(ChannelOperation::Set)),
            ("PUT", Some(ChannelOperation::Get)),
            ("GET", Some(ChannelOperation::List)),
            ("DELETE", Some(ChannelOperation::Unset)),
            ("PATCH", None),
        ];
        for (method, operation) in cases {
            assert_eq!(ChannelOperation::of_method(method), operation, "{method}");
        }
    }
}
