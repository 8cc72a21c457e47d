//! The URLs devices download bundles from, for one App.
//!
//! Three modes, chosen from the App's [`StorageSpec`]:
//!
//! 1. `publicBaseUrl` set: `<publicBaseUrl>/<prefix>/<key>` (a CDN or a public bucket);
//! 2. object storage (S3, GCS, Azure): a presigned GET URL valid for `presignedUrlTtl`;
//! 3. filesystem storage: the update server's own `<server base>/files/<app id>/<key>`.
//!
//! # Presigned URLs on the hot path
//!
//! [`BundleUrls`] is synchronous (the answer is encoded without awaiting) while object_store's
//! [`Signer::signed_url`] is async. Blocking on that future inside the server's runtime would
//! stall a worker thread (and panics on a current-thread runtime), so [`StorageUrls`] never
//! blocks:
//!
//! - **Cache.** A URL is reused while it is younger than half the TTL (so a device always gets
//!   at least half the TTL to download), from a sharded map keyed by storage key: repeated
//!   update checks do not re-sign, and the manifest of a big bundle is signed once per
//!   half-TTL, not once per check.
//! - **Sign without waiting.** On a miss the signing future is polled exactly once
//!   ([`FutureExt::now_or_never`]). With static keys (S3 access keys, a GCS service-account
//!   key, an Azure account key) and with cached workload-identity tokens, signing is pure
//!   computation (HMAC or RSA over the canonical request) and completes on that first poll.
//! - **Finish in the background.** When signing must wait (a token to refresh over the
//!   network, a GCS `signBlob` call, an Azure user-delegation key), the future is dropped, one
//!   background task per key finishes the signing and fills the cache, and this request gets
//!   the previous URL if it is still valid for a quarter of the TTL, else the server URL of
//!   mode 3 (wire the server's `/files` route to redirect to [`StorageUrls::presigned_url`] for
//!   object storage Apps so that this fallback works too).
//! - **Warm up.** [`StorageUrls::prepare_app`] signs every zip and manifest file an App's
//!   channels serve, awaiting what must be awaited; call it when a snapshot is published and
//!   every `TTL / 4` so the hot path only ever hits the cache.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::FutureExt;
use object_store::{path::Path, signer::Method};

use super::{OpenedStorage, StorageError, error_chain};
use crate::duration::parse_duration;
use crate::{
    api::app::StorageSpec,
    core::snapshot::{AppView, BundleView, ManifestFile, StableTarget},
    layout::object_path,
    protocol::encode::BundleUrls,
};

/// The longest `presignedUrlTtl` accepted: 7 days, the limit of S3 and GCS.
pub const MAX_PRESIGNED_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest `presignedUrlTtl` accepted.
const MIN_PRESIGNED_URL_TTL: Duration = Duration::from_secs(1);
/// Cache shards (each behind its own lock).
const SHARDS: usize = 16;
/// URLs kept per shard before expired ones are dropped (about 260,000 in all).
const MAX_CACHED_PER_SHARD: usize = 16_384;
/// Keys signed in the background at once, at most.
const MAX_IN_FLIGHT: usize = 4_096;
/// How long a background signing may take.
const BACKGROUND_SIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one warning about failed signing per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// URLs signed per call of [`Signer::signed_urls`] when warming up.
const PREPARE_CHUNK: usize = 256;

/// How a [`StorageUrls`] builds URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlMode {
    /// `<publicBaseUrl>/<prefix>/<key>`.
    PublicBaseUrl,
    /// Presigned GET URLs of the object storage.
    Presigned,
    /// `<server base>/files/<app id>/<key>`, served by the update server.
    Server,
}

/// The download URLs of one App's bundles; see the [module documentation](self). Cheap to
/// clone (clones share the cache).
#[derive(Clone)]
pub struct StorageUrls {
    inner: Arc<Inner>,
}

struct Inner {
    /// The update server's base URL, without a trailing slash.
    server_base: String,
    mode: Mode,
}

enum Mode {
    /// The public base URL with the encoded prefix, without a trailing slash.
    Public(String),
    Presigned(Arc<Presigner>),
    Server,
}

/// Shows the mode and bases; never a signed URL (they are bearer tokens).
impl fmt::Debug for StorageUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("StorageUrls");
        s.field("mode", &self.mode())
            .field("server_base", &self.inner.server_base);
        match &self.inner.mode {
            Mode::Public(base) => s.field("public_base", base),
            Mode::Presigned(p) => s
                .field("prefix", &p.prefix.as_ref())
                .field("ttl", &p.ttl)
                .field("cached", &p.cached()),
            Mode::Server => &mut s,
        };
        s.finish()
    }
}

impl StorageUrls {
    /// The URLs of an App whose storage is `storage`, opened from `spec`; `server_base` is the
    /// update server's public base URL (what devices reach `/updates` under).
    pub fn new(spec: &StorageSpec, storage: &OpenedStorage, server_base: &str) -> Result<Self, StorageError> {
        let server_base = server_base.trim_end_matches('/').to_owned();
        let mode = if let Some(public) = &spec.public_base_url {
            Mode::Public(public_base(public, &storage.prefix)?)
        } else if let Some(signer) = &storage.signer {
            let ttl = presigned_ttl(&spec.presigned_url_ttl)?;
            Mode::Presigned(Arc::new(Presigner::new(
                signer.clone(),
                storage.prefix.clone(),
                ttl,
            )))
        } else {
            Mode::Server
        };
        Ok(Self {
            inner: Arc::new(Inner { server_base, mode }),
        })
    }

    /// URLs served by the update server itself (`<server_base>/files/<app id>/<key>`).
    pub fn server(server_base: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                server_base: server_base.trim_end_matches('/').to_owned(),
                mode: Mode::Server,
            }),
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> UrlMode {
        match self.inner.mode {
            Mode::Public(_) => UrlMode::PublicBaseUrl,
            Mode::Presigned(_) => UrlMode::Presigned,
            Mode::Server => UrlMode::Server,
        }
    }

    /// How long presigned URLs are valid (presigned mode only).
    pub fn presigned_url_ttl(&self) -> Option<Duration> {
        match &self.inner.mode {
            Mode::Presigned(p) => Some(p.ttl),
            _ => None,
        }
    }

    /// The download URL of `key` (relative to the prefix) of the App `app_id`. Never blocks and
    /// never fails: in presigned mode it falls back as the [module documentation](self) says.
    pub fn url(&self, app_id: &str, key: &str) -> String {
        match &self.inner.mode {
            Mode::Public(base) => {
                let mut url = String::with_capacity(base.len() + key.len() + 1);
                url.push_str(base);
                url.push('/');
                push_key(&mut url, key);
                url
            }
            Mode::Presigned(presigner) => presigner.url(key).unwrap_or_else(|| self.server_url(app_id, key)),
            Mode::Server => self.server_url(app_id, key),
        }
    }

    /// `<server base>/files/<app id>/<key>`.
    pub fn server_url(&self, app_id: &str, key: &str) -> String {
        let base = &self.inner.server_base;
        let mut url = String::with_capacity(base.len() + app_id.len() + key.len() + 8);
        url.push_str(base);
        url.push_str("/files/");
        push_segment(&mut url, app_id);
        url.push('/');
        push_key(&mut url, key);
        url
    }

    /// A presigned URL for `key`, from the cache when fresh, else signed now (awaiting what
    /// signing needs, such as a token refresh). For the server's `/files` redirect and for
    /// tools; the hot path uses [`StorageUrls::url`].
    pub async fn presigned_url(&self, key: &str) -> Result<String, StorageError> {
        let Mode::Presigned(presigner) = &self.inner.mode else {
            return Err(StorageError::NotPresigned);
        };
        if let Some(url) = presigner.fresh(key, Instant::now()) {
            return Ok(url);
        }
        let path =
            object_path(&presigner.prefix, key).ok_or_else(|| StorageError::InvalidKey(key.to_owned()))?;
        let signed_at = Instant::now();
        let url = presigner
            .signer
            .signed_url(Method::GET, &path, presigner.ttl)
            .await
            .map_err(|e| StorageError::Sign {
                key: key.to_owned(),
                message: error_chain(&e),
            })?;
        let url = String::from(url);
        presigner.insert(key, url.clone(), signed_at);
        Ok(url)
    }

    /// Presigns every key of `keys` that has no fresh URL yet, awaiting what signing needs.
    /// Returns how many were signed. Does nothing outside presigned mode.
    pub async fn prepare<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<usize, StorageError> {
        let Mode::Presigned(presigner) = &self.inner.mode else {
            return Ok(0);
        };
        let now = Instant::now();
        let mut wanted: Vec<(&str, Path)> = Vec::new();
        let mut seen = HashSet::new();
        for key in keys {
            if !seen.insert(key) || presigner.fresh(key, now).is_some() {
                continue;
            }
            let path = object_path(&presigner.prefix, key)
                .ok_or_else(|| StorageError::InvalidKey(key.to_owned()))?;
            wanted.push((key, path));
        }
        for chunk in wanted.chunks(PREPARE_CHUNK) {
            let paths: Vec<Path> = chunk.iter().map(|(_, path)| path.clone()).collect();
            let signed_at = Instant::now();
            let urls = presigner
                .signer
                .signed_urls(Method::GET, &paths, presigner.ttl)
                .await
                .map_err(|e| StorageError::Sign {
                    key: chunk
                        .first()
                        .map(|(key, _)| (*key).to_owned())
                        .unwrap_or_default(),
                    message: error_chain(&e),
                })?;
            for ((key, _), url) in chunk.iter().zip(urls) {
                presigner.insert(key, url.into(), signed_at);
            }
        }
        Ok(wanted.len())
    }

    /// Presigns the zip and every manifest file of every bundle the App's channels serve
    /// (stable bundles and rollout candidates). Returns how many URLs were signed.
    pub async fn prepare_app(&self, app: &AppView) -> Result<usize, StorageError> {
        if self.mode() != UrlMode::Presigned {
            return Ok(0);
        }
        let bundles = app.channels.values().flat_map(|channel| {
            let stable = match &channel.stable {
                StableTarget::Bundle(bundle) => Some(bundle.as_ref()),
                _ => None,
            };
            stable
                .into_iter()
                .chain(channel.rollout.iter().map(|r| r.candidate.as_ref()))
        });
        let mut keys: BTreeSet<&str> = BTreeSet::new();
        for bundle in bundles {
            keys.insert(bundle.zip_key.as_str());
            for file in bundle.manifest.iter().flat_map(|m| m.iter()) {
                keys.insert(file.key.as_str());
            }
        }
        self.prepare(keys).await
    }

    /// How many presigned URLs are cached.
    pub fn cached(&self) -> usize {
        match &self.inner.mode {
            Mode::Presigned(p) => p.cached(),
            _ => 0,
        }
    }
}

impl BundleUrls for StorageUrls {
    fn zip_url(&self, app: &AppView, bundle: &BundleView) -> String {
        self.url(&app.app_id, &bundle.zip_key)
    }

    fn file_url(&self, app: &AppView, file: &ManifestFile) -> String {
        self.url(&app.app_id, &file.key)
    }
}

/// `publicBaseUrl` checked, without a trailing slash, with the encoded prefix appended.
fn public_base(public: &str, prefix: &Path) -> Result<String, StorageError> {
    let invalid = |reason: String| StorageError::InvalidPublicBaseUrl {
        value: public.to_owned(),
        reason,
    };
    let url = url::Url::parse(public).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("it must be an http(s) URL".to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "keys are appended to its path: it cannot have a query or fragment".to_owned(),
        ));
    }
    let mut base = public.trim_end_matches('/').to_owned();
    for part in prefix.parts() {
        base.push('/');
        push_segment(&mut base, part.as_ref());
    }
    Ok(base)
}

/// `presignedUrlTtl` parsed and bounded.
fn presigned_ttl(value: &str) -> Result<Duration, StorageError> {
    let invalid = |reason: String| StorageError::InvalidTtl {
        value: value.to_owned(),
        reason,
    };
    let ttl = parse_duration(value).map_err(|error| invalid(error.to_string()))?;
    if ttl < MIN_PRESIGNED_URL_TTL {
        return Err(invalid("it must be at least 1s".to_owned()));
    }
    if ttl > MAX_PRESIGNED_URL_TTL {
        return Err(invalid(
            "it must be at most 168h (7 days, the limit of S3 and GCS)".to_owned(),
        ));
    }
    Ok(ttl)
}

/// Appends `key`, each `/`-separated segment percent-encoded.
fn push_key(out: &mut String, key: &str) {
    for (i, segment) in key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        push_segment(out, segment);
    }
}

/// Appends one path segment, percent-encoding everything but RFC 3986 unreserved characters
/// (storage keys are hex, `.` and `-`: they pass through unchanged).
fn push_segment(out: &mut String, segment: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in segment.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// A cached presigned URL.
struct Cached {
    url: String,
    signed_at: Instant,
}

/// Presigned URLs with their cache.
struct Presigner {
    signer: Arc<dyn object_store::signer::Signer>,
    prefix: Path,
    ttl: Duration,
    /// Reused without re-signing while younger than this (half the TTL).
    fresh_for: Duration,
    /// Still handed out, when signing cannot complete at once, while younger than this (three
    /// quarters of the TTL).
    usable_for: Duration,
    shards: Box<[RwLock<HashMap<String, Cached>>]>,
    hasher: std::collections::hash_map::RandomState,
    in_flight: Mutex<HashSet<String>>,
    created: Instant,
    /// Milliseconds after `created` of the last warning, plus one (0: none yet).
    last_warning: AtomicU64,
}

impl Presigner {
    fn new(signer: Arc<dyn object_store::signer::Signer>, prefix: Path, ttl: Duration) -> Self {
        Self {
            signer,
            prefix,
            ttl,
            fresh_for: ttl / 2,
            usable_for: ttl.mul_f64(0.75),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            in_flight: Mutex::new(HashSet::new()),
            created: Instant::now(),
            last_warning: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Cached>> {
        // The modulo keeps the index in range whatever the hash.
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &self.shards[index]
    }

    /// The cached URL of `key` if younger than `max_age`.
    fn cached_within(&self, key: &str, now: Instant, max_age: Duration) -> Option<String> {
        let shard = self.shard(key).read().unwrap_or_else(PoisonError::into_inner);
        shard
            .get(key)
            .filter(|cached| now.saturating_duration_since(cached.signed_at) < max_age)
            .map(|cached| cached.url.clone())
    }

    fn fresh(&self, key: &str, now: Instant) -> Option<String> {
        self.cached_within(key, now, self.fresh_for)
    }

    fn insert(&self, key: &str, url: String, signed_at: Instant) {
        let mut shard = self.shard(key).write().unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= MAX_CACHED_PER_SHARD && !shard.contains_key(key) {
            let now = Instant::now();
            shard.retain(|_, cached| now.saturating_duration_since(cached.signed_at) < self.fresh_for);
            if shard.len() >= MAX_CACHED_PER_SHARD {
                shard.clear();
            }
        }
        match shard.get_mut(key) {
            // Keep the newer of two URLs signed concurrently.
            Some(cached) if cached.signed_at >= signed_at => {}
            Some(cached) => *cached = Cached { url, signed_at },
            None => {
                shard.insert(key.to_owned(), Cached { url, signed_at });
            }
        }
    }

    fn cached(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// The hot path: a fresh cached URL, else one signed without waiting, else a still-valid
    /// cached URL while the signing finishes in the background; `None` when there is none.
    fn url(self: &Arc<Self>, key: &str) -> Option<String> {
        let now = Instant::now();
        if let Some(url) = self.fresh(key, now) {
            return Some(url);
        }
        let path = object_path(&self.prefix, key)?;
        match self
            .signer
            .signed_url(Method::GET, &path, self.ttl)
            .now_or_never()
        {
            Some(Ok(url)) => {
                let url = String::from(url);
                self.insert(key, url.clone(), now);
                Some(url)
            }
            Some(Err(error)) => {
                self.warn(key, &error_chain(&error));
                self.cached_within(key, now, self.usable_for)
            }
            None => {
                self.sign_in_background(key, path);
                self.cached_within(key, now, self.usable_for)
            }
        }
    }

    /// Finishes signing `key` on the current Tokio runtime (one task per key at a time).
    fn sign_in_background(self: &Arc<Self>, key: &str, path: Path) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            if in_flight.len() >= MAX_IN_FLIGHT || !in_flight.insert(key.to_owned()) {
                return;
            }
        }
        let this = Arc::clone(self);
        let key = key.to_owned();
        runtime.spawn(async move {
            let signed_at = Instant::now();
            let signing = this.signer.signed_url(Method::GET, &path, this.ttl);
            match tokio::time::timeout(BACKGROUND_SIGN_TIMEOUT, signing).await {
                Ok(Ok(url)) => this.insert(&key, url.into(), signed_at),
                Ok(Err(error)) => this.warn(&key, &error_chain(&error)),
                Err(_) => this.warn(&key, "signing took longer than 30 s"),
            }
            this.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        });
    }

    /// Logs a signing failure, at most once per [`WARN_INTERVAL`].
    fn warn(&self, key: &str, message: &str) {
        let now = u64::try_from(self.created.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_warning.load(Ordering::Relaxed);
        let interval = u64::try_from(WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < interval {
            return;
        }
        if self
            .last_warning
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                key,
                error = message,
                "cannot presign a download URL; serving a cached URL or the server's URL"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use object_store::{
        memory::InMemory,
        signer::{Signer, Url},
    };

    use super::*;
    use crate::{
        api::app::{FilesystemStorage, StorageSpec},
        storage::Backend,
    };

    /// Counts signings; `delay` makes every signing wait (like a token refresh).
    #[derive(Debug, Default)]
    struct CountingSigner {
        calls: AtomicUsize,
        delay: Option<Duration>,
        fail: bool,
    }

    #[async_trait]
    impl Signer for CountingSigner {
        async fn signed_url(
            &self,
            method: Method,
            path: &Path,
            expires_in: Duration,
        ) -> object_store::Result<Url> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            if self.fail {
                return Err(object_store::Error::Generic {
                    store: "test",
                    source: "no credentials".into(),
                });
            }
            Ok(Url::parse(&format!(
                "https://bucket.example/{path}?method={method}&expires={}&n={n}",
                expires_in.as_secs()
            ))
            .expect("a URL"))
        }
    }

    fn spec(public: Option<&str>, ttl: &str) -> StorageSpec {
        StorageSpec {
            filesystem: Some(FilesystemStorage {
                path: "unused".to_owned(),
                persistent_volume_claim: None,
            }),
            s3: None,
            gcs: None,
            azure: None,
            prefix: Some("apps/shop/".to_owned()),
            public_base_url: public.map(str::to_owned),
            presigned_url_ttl: ttl.to_owned(),
        }
    }

    fn storage(signer: Option<Arc<CountingSigner>>) -> OpenedStorage {
        OpenedStorage {
            store: Arc::new(InMemory::new()),
            prefix: Path::from("apps/shop"),
            signer: signer.map(|s| s as Arc<dyn Signer>),
            backend: Backend::S3,
        }
    }

    const ZIP: &str = "zips/0123abcd.zip";

    #[test]
    fn public_base_url_mode() {
        let urls = StorageUrls::new(
            &spec(Some("https://cdn.example.com/bundles/"), "1h"),
            &storage(Some(Arc::default())),
            "http://server",
        )
        .unwrap();
        assert_eq!(urls.mode(), UrlMode::PublicBaseUrl);
        assert_eq!(
            urls.url("com.example.shop", ZIP),
            "https://cdn.example.com/bundles/apps/shop/zips/0123abcd.zip"
        );
        assert_eq!(
            urls.url("com.example.shop", "files/a b%"),
            "https://cdn.example.com/bundles/apps/shop/files/a%20b%25"
        );
        for bad in ["ftp://cdn", "https://cdn.example.com/?sig=1", "not a url"] {
            let error = StorageUrls::new(&spec(Some(bad), "1h"), &storage(None), "http://s").unwrap_err();
            assert!(
                matches!(error, StorageError::InvalidPublicBaseUrl { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn server_mode_matches_the_server_route() {
        let urls = StorageUrls::new(&spec(None, "1h"), &storage(None), "http://10.0.0.1:8080/").unwrap();
        assert_eq!(urls.mode(), UrlMode::Server);
        assert_eq!(
            urls.url("com.example.shop", ZIP),
            "http://10.0.0.1:8080/files/com.example.shop/zips/0123abcd.zip"
        );
        assert_eq!(
            StorageUrls::server("http://h").url("com.example.shop", "files/abc.br"),
            "http://h/files/com.example.shop/files/abc.br"
        );
    }

    #[test]
    fn ttl_is_checked_in_presigned_mode() {
        for (ttl, message) in [
            ("", "empty"),
            ("0s", "at least 1s"),
            ("169h", "at most 168h"),
            ("1d", "unknown unit"),
        ] {
            let error =
                StorageUrls::new(&spec(None, ttl), &storage(Some(Arc::default())), "http://s").unwrap_err();
            assert!(error.to_string().contains(message), "{ttl}: {error}");
        }
        let urls =
            StorageUrls::new(&spec(None, "1h30m"), &storage(Some(Arc::default())), "http://s").unwrap();
        assert_eq!(urls.presigned_url_ttl(), Some(Duration::from_secs(5400)));
    }

    #[test]
    fn presigned_urls_are_signed_inline_and_cached() {
        let signer = Arc::new(CountingSigner::default());
        let urls = StorageUrls::new(&spec(None, "30m"), &storage(Some(signer.clone())), "http://s").unwrap();
        assert_eq!(urls.mode(), UrlMode::Presigned);
        let first = urls.url("com.example.shop", ZIP);
        assert_eq!(
            first,
            "https://bucket.example/apps/shop/zips/0123abcd.zip?method=GET&expires=1800&n=0"
        );
        for _ in 0..100 {
            assert_eq!(urls.url("com.example.shop", ZIP), first);
        }
        assert_eq!(signer.calls.load(Ordering::SeqCst), 1);
        assert_eq!(urls.cached(), 1);
        // A bad key is never signed: the server URL answers it (with 400).
        assert_eq!(
            urls.url("com.example.shop", "../secret"),
            "http://s/files/com.example.shop/../secret"
        );
        assert_eq!(signer.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failed_signing_falls_back_to_the_server_url() {
        let signer = Arc::new(CountingSigner {
            fail: true,
            ..CountingSigner::default()
        });
        let urls = StorageUrls::new(&spec(None, "1h"), &storage(Some(signer)), "http://s").unwrap();
        assert_eq!(urls.url("app.id", ZIP), "http://s/files/app.id/zips/0123abcd.zip");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn signing_that_must_wait_finishes_in_the_background() {
        let signer = Arc::new(CountingSigner {
            delay: Some(Duration::from_millis(20)),
            ..CountingSigner::default()
        });
        let urls = StorageUrls::new(&spec(None, "1h"), &storage(Some(signer.clone())), "http://s").unwrap();
        // Not ready at once: the server URL now, one background signing for many requests.
        for _ in 0..10 {
            assert_eq!(urls.url("app.id", ZIP), "http://s/files/app.id/zips/0123abcd.zip");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let url = urls.url("app.id", ZIP);
        assert!(url.starts_with("https://bucket.example/apps/shop/zips/"), "{url}");
        // 10 polled-once attempts that were dropped, plus the one background signing.
        assert_eq!(signer.calls.load(Ordering::SeqCst), 11);
        assert_eq!(urls.presigned_url(ZIP).await.unwrap(), url);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn prepare_signs_each_key_once() {
        let signer = Arc::new(CountingSigner {
            delay: Some(Duration::from_millis(1)),
            ..CountingSigner::default()
        });
        let urls = StorageUrls::new(&spec(None, "1h"), &storage(Some(signer.clone())), "http://s").unwrap();
        let keys = [ZIP, "files/aa", "files/bb.br", ZIP];
        assert_eq!(urls.prepare(keys).await.unwrap(), 3);
        assert_eq!(urls.prepare(keys).await.unwrap(), 0);
        assert_eq!(signer.calls.load(Ordering::SeqCst), 3);
        // Now the hot path only reads the cache, although signing would have to wait.
        assert!(
            urls.url("app.id", "files/aa")
                .starts_with("https://bucket.example/")
        );
        assert_eq!(signer.calls.load(Ordering::SeqCst), 3);
        assert!(matches!(
            urls.prepare(["/abs"]).await,
            Err(StorageError::InvalidKey(_))
        ));
        let server = StorageUrls::server("http://s");
        assert_eq!(server.prepare(keys).await.unwrap(), 0);
        assert!(matches!(
            server.presigned_url(ZIP).await,
            Err(StorageError::NotPresigned)
        ));
    }

    #[test]
    fn stale_urls_are_resigned() {
        let signer = Arc::new(CountingSigner::default());
        let presigner = Arc::new(Presigner::new(
            signer.clone(),
            Path::from("p"),
            Duration::from_secs(60),
        ));
        let old = Instant::now()
            .checked_sub(Duration::from_secs(40))
            .expect("a monotonic clock older than 40 s");
        presigner.insert(ZIP, "https://old".to_owned(), old);
        // Older than half the TTL: signed again (inline, since this signer never waits).
        let url = presigner.url(ZIP).unwrap();
        assert_ne!(url, "https://old");
        assert_eq!(signer.calls.load(Ordering::SeqCst), 1);
        // An older signing finishing late does not replace the newer URL.
        presigner.insert(ZIP, "https://older".to_owned(), old);
        assert_eq!(presigner.url(ZIP).unwrap(), url);
    }

    #[test]
    fn segments_are_percent_encoded() {
        let mut out = String::new();
        push_key(&mut out, "files/0aF-._~/é?#");
        assert_eq!(out, "files/0aF-._~/%C3%A9%3F%23");
    }
}
