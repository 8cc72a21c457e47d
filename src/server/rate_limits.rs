//! Request-rate limits of the public endpoints, through `governor`: a keyed limiter counts each
//! client (by address, before the request is read), and one limiter per App counts all its
//! clients (once the request's body names the App). Settings come from the served snapshot
//! ([`crate::core::rate_limits`]); a limiter whose settings did not change is kept across
//! snapshots, so a republish never hands out fresh budgets.
//!
//! Memory: the per-client limiter holds one entry per client whose bucket is not full again,
//! i.e. that sent a request within the last `burst / rate` seconds (10 s by default). Every
//! [`RETAIN_EVERY`] the others are forgotten ([`RateLimiters::retain_recent`]), so it holds the
//! clients of the last `burst / rate + 5` seconds; when that is more than [`MAX_CLIENTS`] (a
//! flood from that many addresses) the limiter is started afresh. At about 40 to 80 bytes an
//! entry (an address and a 64-bit state in a sharded hash map), the bound is some 20 MB, plus
//! what arrives in one period. The per-App limiters are one per served App.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use axum::{
    Json,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};

use super::{ServerState, metrics::LimitLabels};
use crate::{
    core::{
        rate_limits::{self, ClientIpHeader, ClientPolicy, Limit},
        snapshot::Snapshot,
    },
    protocol::encode,
};

/// How often clients whose budget is whole again are forgotten.
pub const RETAIN_EVERY: Duration = Duration::from_secs(5);
/// The most clients remembered after a [`RateLimiters::retain_recent`]; past it the per-client
/// limiter starts afresh.
pub const MAX_CLIENTS: usize = 250_000;

/// Which limit a request was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The client's own.
    PerClient,
    /// The App's, all clients together.
    PerApp,
}

impl LimitKind {
    /// The metric label and error wording.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::PerClient => "per_client",
            LimitKind::PerApp => "per_app",
        }
    }
}

/// A request over a limit, and how long until it would not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// The limit.
    pub kind: LimitKind,
    /// The wait until one more request conforms.
    pub wait: Duration,
}

impl OverLimit {
    /// The `429` answer (counted in `ota_server_rate_limited_total`).
    pub fn response(self, state: &ServerState) -> Response {
        state
            .metrics
            .rate_limited
            .get_or_create(&LimitLabels {
                limit: self.kind.name(),
            })
            .inc();
        let seconds = rate_limits::retry_after_seconds(self.wait);
        let message = match self.kind {
            LimitKind::PerClient => format!("too many requests from this client; retry after {seconds} s"),
            LimitKind::PerApp => format!("too many requests for this app; retry after {seconds} s"),
        };
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(encode::plain_error("rate_limited", &message)),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

fn quota(limit: Limit) -> Quota {
    let at_least_one = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(at_least_one(limit.per_second)).allow_burst(at_least_one(limit.burst))
}

/// The per-client limiter and the settings it was built with.
struct Clients {
    limit: Limit,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

/// The limiters of one snapshot.
#[derive(Default)]
struct Limiters {
    clients: Option<Arc<Clients>>,
    header: Option<ClientIpHeader>,
    apps: HashMap<String, (Limit, Arc<DefaultDirectRateLimiter>)>,
}

/// The server's limiters, swapped whole when a snapshot changes them.
#[derive(Default)]
pub struct RateLimiters {
    current: ArcSwap<Limiters>,
}

impl RateLimiters {
    /// Takes the limits of `snapshot`'s Apps, keeping the limiters whose settings are the same.
    pub fn update(&self, snapshot: &Snapshot) {
        let previous = self.current.load_full();
        let ClientPolicy {
            limit,
            header,
            headers_disagree,
        } = rate_limits::client_policy(snapshot.apps().map(|app| &app.rate_limits));
        if headers_disagree {
            tracing::warn!(
                "the served Apps name different rateLimits.clientIpHeader settings: clients are counted by their connection's address"
            );
        }
        let clients = limit.map(|limit| match &previous.clients {
            Some(clients) if clients.limit == limit => Arc::clone(clients),
            _ => Arc::new(Clients {
                limit,
                limiter: RateLimiter::keyed(quota(limit)),
            }),
        });
        let apps = snapshot
            .apps()
            .filter_map(|app| {
                let limit = app.rate_limits.per_app?;
                let limiter = match previous.apps.get(&app.app_id) {
                    Some((previous, limiter)) if *previous == limit => Arc::clone(limiter),
                    _ => Arc::new(RateLimiter::direct(quota(limit))),
                };
                Some((app.app_id.clone(), (limit, limiter)))
            })
            .collect();
        self.current.store(Arc::new(Limiters {
            clients,
            header,
            apps,
        }));
    }

    /// Counts a request of the client at `peer` (its address from the configured header when
    /// there is one); `Err` when it is over the per-client limit.
    pub fn check_client(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), OverLimit> {
        let limiters = self.current.load();
        let Some(clients) = &limiters.clients else {
            return Ok(());
        };
        let address = match &limiters.header {
            Some(source) => address_from_header(peer, headers, source),
            None => peer,
        };
        clients
            .limiter
            .check_key(&rate_limits::client_key(address))
            .map_err(|not_until| OverLimit {
                kind: LimitKind::PerClient,
                wait: not_until.wait_time_from(clients.limiter.clock().now()),
            })
    }

    /// Counts a request for the App `app_id`; `Err` when it is over the App's limit. Apps not
    /// served have no limit (their requests write nothing).
    pub fn check_app(&self, app_id: &str) -> Result<(), OverLimit> {
        let limiters = self.current.load();
        let Some((_, limiter)) = limiters.apps.get(app_id) else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| OverLimit {
            kind: LimitKind::PerApp,
            wait: not_until.wait_time_from(limiter.clock().now()),
        })
    }

    /// Forgets the clients whose budget is whole again; starts the per-client limiter afresh
    /// when more than [`MAX_CLIENTS`] remain. Returns how many clients are remembered.
    pub fn retain_recent(&self) -> usize {
        let limiters = self.current.load_full();
        let Some(clients) = &limiters.clients else {
            return 0;
        };
        clients.limiter.retain_recent();
        clients.limiter.shrink_to_fit();
        let remembered = clients.limiter.len();
        if remembered <= MAX_CLIENTS {
            return remembered;
        }
        tracing::warn!(
            clients = remembered,
            max = MAX_CLIENTS,
            "more clients within their rate-limit window than the limiter keeps: starting it afresh"
        );
        let fresh = Arc::new(Clients {
            limit: clients.limit,
            limiter: RateLimiter::keyed(quota(clients.limit)),
        });
        // Only if no snapshot replaced the limiters meanwhile.
        self.current.rcu(|current| {
            let same = match (&current.clients, &limiters.clients) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            Arc::new(Limiters {
                clients: if same {
                    Some(Arc::clone(&fresh))
                } else {
                    current.clients.clone()
                },
                header: current.header.clone(),
                apps: current.apps.clone(),
            })
        });
        0
    }
}

/// The client's address from `source`'s header, else the peer's.
fn address_from_header(peer: IpAddr, headers: &HeaderMap, source: &ClientIpHeader) -> IpAddr {
    let mut values = Vec::new();
    for value in headers.get_all(source.name.as_str()) {
        match value.to_str() {
            Ok(text) => values.push(text),
            // Not text: no position in the list can be trusted.
            Err(_) => return peer,
        }
    }
    rate_limits::client_address(peer, values, source.trusted_proxies)
}

/// Middleware (`axum::middleware::from_fn_with_state`): answers 429 to a client over its limit,
/// before anything of its request is read. Without the connection's address (a router served
/// without connect info) every client is one.
pub async fn per_client(State(state): State<Arc<ServerState>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    match state.rate_limits.check_client(peer, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(over) => over.response(&state),
    }
}

/// Forgets, every [`RETAIN_EVERY`] of the server's clock, the clients whose budget is whole
/// again, until the task is dropped.
pub async fn retain_recent_periodically(state: Arc<ServerState>) {
    loop {
        state.clock.sleep(RETAIN_EVERY).await;
        let remembered = state.rate_limits.retain_recent();
        state
            .metrics
            .rate_limit_clients
            .set(i64::try_from(remembered).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_read_only_when_its_values_are_text() {
        let source = ClientIpHeader {
            name: "x-forwarded-for".to_owned(),
            trusted_proxies: 1,
        };
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(address_from_header(peer, &headers, &source), peer);
        headers.append("X-Forwarded-For", HeaderValue::from_static("1.2.3.4"));
        headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        assert_eq!(
            address_from_header(peer, &headers, &source),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff198.51.100.1").unwrap(),
        );
        assert_eq!(address_from_header(peer, &headers, &source), peer);
    }

    fn snapshot_with(rate_limits: serde_json::Value) -> Snapshot {
        use crate::core::fixtures;
        let mut inputs = fixtures::inputs();
        inputs.apps = vec![fixtures::app(
            "shop",
            fixtures::APP_ID,
            serde_json::json!({"server": {"rateLimits": rate_limits}}),
        )];
        fixtures::snapshot(&inputs)
    }

    fn peer(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    #[test]
    fn a_client_over_its_burst_is_refused_with_the_wait_until_its_next_request() {
        let limiters = RateLimiters::default();
        limiters.update(&snapshot_with(serde_json::json!({
            "perClient": {"requestsPerSecond": 1, "burst": 2},
        })));
        let headers = HeaderMap::new();
        assert!(limiters.check_client(peer(1), &headers).is_ok());
        assert!(limiters.check_client(peer(1), &headers).is_ok());
        let over = limiters.check_client(peer(1), &headers).unwrap_err();
        assert_eq!(over.kind, LimitKind::PerClient);
        assert!(
            over.wait > Duration::ZERO && over.wait <= Duration::from_secs(1),
            "{over:?}"
        );
        assert!(limiters.check_client(peer(2), &headers).is_ok(), "another client");
    }

    #[test]
    fn the_same_limits_in_a_new_snapshot_keep_the_budgets_spent() {
        let limiters = RateLimiters::default();
        let rate_limits = serde_json::json!({
            "perClient": {"requestsPerSecond": 1, "burst": 1},
            "perApp": {"requestsPerSecond": 1, "burst": 1},
        });
        limiters.update(&snapshot_with(rate_limits.clone()));
        let headers = HeaderMap::new();
        assert!(limiters.check_client(peer(1), &headers).is_ok());
        assert!(limiters.check_app(fixtures_app_id()).is_ok());
        limiters.update(&snapshot_with(rate_limits));
        assert!(limiters.check_client(peer(1), &headers).is_err());
        assert_eq!(
            limiters.check_app(fixtures_app_id()).unwrap_err().kind,
            LimitKind::PerApp
        );
        // An app not served has no per-App limit.
        assert!(limiters.check_app("com.example.other").is_ok());
        // New limits: new budgets.
        limiters.update(&snapshot_with(serde_json::json!({
            "perClient": {"requestsPerSecond": 2, "burst": 1},
            "perApp": {"requestsPerSecond": 2, "burst": 1},
        })));
        assert!(limiters.check_client(peer(1), &headers).is_ok());
        assert!(limiters.check_app(fixtures_app_id()).is_ok());
        // Off: nothing is counted.
        limiters.update(&snapshot_with(serde_json::json!({"enabled": false})));
        for _ in 0..10 {
            assert!(limiters.check_client(peer(1), &headers).is_ok());
            assert!(limiters.check_app(fixtures_app_id()).is_ok());
        }
    }

    fn fixtures_app_id() -> &'static str {
        crate::core::fixtures::APP_ID
    }

    #[test]
    fn clients_whose_bucket_is_full_again_are_forgotten() {
        let limiters = RateLimiters::default();
        // A bucket of 1 refilled in 1 ms: full again almost at once.
        limiters.update(&snapshot_with(serde_json::json!({
            "perClient": {"requestsPerSecond": 1000, "burst": 1},
        })));
        let headers = HeaderMap::new();
        for n in 1..=50 {
            assert!(limiters.check_client(peer(n), &headers).is_ok());
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(limiters.retain_recent(), 0);
        // A client within its window is kept.
        limiters.update(&snapshot_with(serde_json::json!({
            "perClient": {"requestsPerSecond": 1, "burst": 1},
        })));
        assert!(limiters.check_client(peer(1), &headers).is_ok());
        assert_eq!(limiters.retain_recent(), 1);
    }

    #[test]
    fn the_trusted_header_names_the_client() {
        let limiters = RateLimiters::default();
        limiters.update(&snapshot_with(serde_json::json!({
            "perClient": {"requestsPerSecond": 1, "burst": 1},
            "clientIpHeader": "X-Forwarded-For",
        })));
        let mut first = HeaderMap::new();
        first.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        let mut second = HeaderMap::new();
        second.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.2"));
        // One proxy address, two clients behind it.
        assert!(limiters.check_client(peer(9), &first).is_ok());
        assert!(limiters.check_client(peer(9), &second).is_ok());
        assert!(limiters.check_client(peer(9), &first).is_err());
    }

    #[test]
    fn a_quota_is_the_limit_given() {
        let quota = quota(Limit {
            per_second: 4,
            burst: 10,
        });
        assert_eq!(quota.burst_size().get(), 10);
        assert_eq!(quota.replenish_interval(), Duration::from_millis(250));
    }
}
