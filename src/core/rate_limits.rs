//! The rate limits of the update server's public endpoints, as settings: what each App asks for
//! (`spec.server.rateLimits`), what applies to a client before its request names an App, who the
//! client is, and how long it is told to wait. The limiters themselves (and their clock) are the
//! server's ([`crate::server::rate_limits`]).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::api::app::{RateLimit, RateLimitsSpec};

/// A limit: a bucket of `burst` requests refilled at `per_second`; both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// The most requests at once.
    pub burst: u32,
}

impl Limit {
    /// The limit of a spec's field. The schema refuses rates below 1; a value that got past it
    /// anyway is taken as 1, never as "no limit".
    pub fn of(limit: &RateLimit) -> Limit {
        let at_least_one = |value: i32| u32::try_from(value).unwrap_or(0).max(1);
        Limit {
            per_second: at_least_one(limit.requests_per_second),
            burst: at_least_one(limit.burst),
        }
    }
}

/// A header naming the client's address, written by proxies in front of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIpHeader {
    /// The header's name, lower case.
    pub name: String,
    /// How many proxies append to it: the client is the entry this many from the right.
    pub trusted_proxies: usize,
}

/// An App's rate limits as served: `None` is no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRateLimits {
    /// The limit of one client.
    pub per_client: Option<Limit>,
    /// The limit of all the App's clients together.
    pub per_app: Option<Limit>,
    /// Where the client's address is read, when not from the connection.
    pub client_ip_header: Option<ClientIpHeader>,
}

impl Default for AppRateLimits {
    /// The limits of an App that sets none: the spec's defaults.
    fn default() -> Self {
        AppRateLimits::of(None)
    }
}

impl AppRateLimits {
    /// The limits `spec` asks for (absent: the defaults; `enabled: false`: none).
    pub fn of(spec: Option<&RateLimitsSpec>) -> AppRateLimits {
        let defaults = RateLimitsSpec::default();
        let spec = spec.unwrap_or(&defaults);
        if !spec.enabled {
            return AppRateLimits {
                per_client: None,
                per_app: None,
                client_ip_header: None,
            };
        }
        AppRateLimits {
            per_client: Some(Limit::of(&spec.per_client)),
            per_app: Some(Limit::of(&spec.per_app)),
            client_ip_header: spec.client_ip_header.as_ref().map(|name| ClientIpHeader {
                name: name.to_ascii_lowercase(),
                trusted_proxies: usize::try_from(spec.trusted_proxies).unwrap_or(1).max(1),
            }),
        }
    }
}

/// What applies to every client of a server before its request names an App.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPolicy {
    /// The per-client limit.
    pub limit: Option<Limit>,
    /// Where the client's address is read, when not from the connection.
    pub header: Option<ClientIpHeader>,
    /// The Apps name different client IP headers (or some none): none is used.
    pub headers_disagree: bool,
}

/// The per-client policy of a server serving `apps`: the most generous per-client limit of them
/// (none when one of them has none), so that no client is limited below what the App it talks
/// to allows; and their client IP header when they all name the same one (a header only some
/// of them trust could be written by clients that reach the server directly). A server serving
/// no App yet applies the defaults.
pub fn client_policy<'a>(apps: impl IntoIterator<Item = &'a AppRateLimits>) -> ClientPolicy {
    let mut apps = apps.into_iter();
    let Some(first) = apps.next() else {
        let defaults = AppRateLimits::default();
        return ClientPolicy {
            limit: defaults.per_client,
            header: defaults.client_ip_header,
            headers_disagree: false,
        };
    };
    let mut policy = ClientPolicy {
        limit: first.per_client,
        header: first.client_ip_header.clone(),
        headers_disagree: false,
    };
    for app in apps {
        policy.limit = match (policy.limit, app.per_client) {
            (Some(a), Some(b)) => Some(Limit {
                per_second: a.per_second.max(b.per_second),
                burst: a.burst.max(b.burst),
            }),
            _ => None,
        };
        if policy.header != app.client_ip_header {
            policy.headers_disagree = true;
        }
    }
    if policy.headers_disagree {
        policy.header = None;
    }
    policy
}

/// The client's address: the entry `trusted_proxies` from the right of the header's values
/// (its lines in order, each a comma-separated list), or the left-most when there are fewer; the
/// peer's address when the header is absent or that entry is not an address.
pub fn client_address<'a>(
    peer: IpAddr,
    header_values: impl IntoIterator<Item = &'a str>,
    trusted_proxies: usize,
) -> IpAddr {
    let entries: Vec<&str> = header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    let index = entries.len().saturating_sub(trusted_proxies.max(1));
    entries
        .get(index)
        .and_then(|entry| parse_address(entry))
        .unwrap_or(peer)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
pub fn parse_address(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(address) = entry.parse::<SocketAddr>() {
        return Some(address.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The key a client is counted under: an IPv4 address (also when written as an IPv4-mapped IPv6
/// one), or an IPv6 address's /64 network, which one device or home is given whole (counting
/// each address would give one device 2^64 budgets).
pub fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// `Retry-After` in whole seconds for a wait: rounded up, at least 1 (a client told 0 would
/// come back at once, and still be over the limit).
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs();
    let rounded = if wait.subsec_nanos() > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    };
    rounded.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const PEER: &str = "10.0.0.9";

    #[test]
    fn the_client_is_the_right_most_entry_by_default() {
        let peer = ip(PEER);
        assert_eq!(client_address(peer, ["203.0.113.7"], 1), ip("203.0.113.7"));
        // A client that writes its own header gets the proxy's entry appended after it.
        assert_eq!(
            client_address(peer, ["1.2.3.4, 203.0.113.7"], 1),
            ip("203.0.113.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client_address(peer, ["1.2.3.4", "198.51.100.2, 203.0.113.7"], 1),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn with_two_proxies_the_second_entry_from_the_right_is_the_client() {
        let peer = ip(PEER);
        assert_eq!(
            client_address(peer, ["1.2.3.4, 203.0.113.7, 10.1.1.1"], 2),
            ip("203.0.113.7")
        );
        // Fewer entries than proxies: the left-most (written by a proxy).
        assert_eq!(client_address(peer, ["203.0.113.7"], 2), ip("203.0.113.7"));
    }

    #[test]
    fn a_missing_empty_or_unreadable_entry_falls_back_to_the_peer() {
        let peer = ip(PEER);
        assert_eq!(client_address(peer, [], 1), peer);
        assert_eq!(client_address(peer, [" , "], 1), peer);
        assert_eq!(client_address(peer, ["1.2.3.4, unknown"], 1), peer);
        assert_eq!(client_address(peer, ["for=192.0.2.60"], 1), peer);
        // The entry to use is unreadable: never an entry further left, which a client wrote.
        assert_eq!(client_address(peer, ["1.2.3.4, 999.1.1.1"], 1), peer);
    }

    #[test]
    fn addresses_with_ports_and_brackets_are_read() {
        assert_eq!(parse_address("192.0.2.1:4711"), Some(ip("192.0.2.1")));
        assert_eq!(parse_address("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_address("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_address("[2001:db8::1]:4711"), Some(ip("2001:db8::1")));
        assert_eq!(parse_address("[2001:db8::1"), None);
        assert_eq!(parse_address("example.com"), None);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:2:ffff::7"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(999)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_seconds(Duration::MAX), u64::MAX);
    }

    fn spec(enabled: bool, per_client: (i32, i32), header: Option<&str>) -> RateLimitsSpec {
        RateLimitsSpec {
            enabled,
            per_client: RateLimit {
                requests_per_second: per_client.0,
                burst: per_client.1,
            },
            client_ip_header: header.map(str::to_owned),
            ..RateLimitsSpec::default()
        }
    }

    #[test]
    fn an_app_without_limits_gets_the_defaults_and_disabled_gets_none() {
        let defaults = AppRateLimits::of(None);
        assert_eq!(
            defaults.per_client,
            Some(Limit {
                per_second: 1_000,
                burst: 10_000
            })
        );
        assert_eq!(
            defaults.per_app,
            Some(Limit {
                per_second: 10_000,
                burst: 50_000
            })
        );
        assert_eq!(defaults.client_ip_header, None);
        let off = AppRateLimits::of(Some(&spec(false, (5, 5), Some("X-Forwarded-For"))));
        assert_eq!(
            (off.per_client, off.per_app, off.client_ip_header),
            (None, None, None)
        );
        let header = AppRateLimits::of(Some(&spec(true, (5, 5), Some("X-Forwarded-For"))));
        assert_eq!(
            header.client_ip_header,
            Some(ClientIpHeader {
                name: "x-forwarded-for".to_owned(),
                trusted_proxies: 1
            })
        );
        // A rate of 0 that got past the schema is 1, not "unlimited".
        let zero = AppRateLimits::of(Some(&spec(true, (0, -3), None)));
        assert_eq!(
            zero.per_client,
            Some(Limit {
                per_second: 1,
                burst: 1
            })
        );
    }

    #[test]
    fn several_apps_give_the_most_generous_client_limit_and_a_header_only_if_all_agree() {
        let a = AppRateLimits::of(Some(&spec(true, (10, 500), Some("X-Forwarded-For"))));
        let b = AppRateLimits::of(Some(&spec(true, (50, 100), Some("x-forwarded-for"))));
        let policy = client_policy([&a, &b]);
        assert_eq!(
            policy.limit,
            Some(Limit {
                per_second: 50,
                burst: 500
            })
        );
        assert_eq!(policy.header, a.client_ip_header);
        assert!(!policy.headers_disagree);

        let direct = AppRateLimits::of(Some(&spec(true, (10, 10), None)));
        let policy = client_policy([&a, &direct]);
        assert_eq!(policy.header, None);
        assert!(policy.headers_disagree);

        let off = AppRateLimits::of(Some(&spec(false, (1, 1), None)));
        assert_eq!(client_policy([&a, &off]).limit, None);
        assert_eq!(client_policy([]).limit, AppRateLimits::default().per_client);
    }
}
