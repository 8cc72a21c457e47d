//! Upload progress for `ota bundle push`: a store that counts the bytes the sync writes through
//! it, shown as a progress bar with bytes and rate when standard error is a terminal, and as a
//! plain line every few seconds otherwise (CI logs).

use std::{
    fmt,
    io::IsTerminal,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, UploadPart, path::Path,
};

/// How often a plain progress line is printed.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Bytes and objects written so far.
#[derive(Debug, Default)]
pub(super) struct Counters {
    bytes: AtomicU64,
    objects: AtomicU64,
}

impl Counters {
    /// Bytes written.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Objects written (whole or completed multipart uploads).
    pub(super) fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }
}

/// Shows the counters while an upload runs.
pub(super) struct Progress {
    counters: Arc<Counters>,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Progress {
    /// Starts showing `counters` on standard error (call inside a Tokio runtime).
    pub(super) fn start(counters: Arc<Counters>) -> Self {
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} uploading: {bytes} sent, {bytes_per_sec} ({elapsed})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            let shown = bar.clone();
            let watched = Arc::clone(&counters);
            let ticker = tokio::spawn(async move {
                loop {
                    shown.set_position(watched.bytes());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            return Progress {
                counters,
                bar: Some(bar),
                ticker: Some(ticker),
                started,
            };
        }
        let watched = Arc::clone(&counters);
        let ticker = tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(PLAIN_INTERVAL).await;
                let bytes = watched.bytes();
                if bytes != last {
                    eprintln!(
                        "uploading: {} sent, {}",
                        HumanBytes(bytes),
                        rate(bytes, started.elapsed())
                    );
                    last = bytes;
                }
            }
        });
        Progress {
            counters,
            bar: None,
            ticker: Some(ticker),
            started,
        }
    }

    /// Stops showing progress and returns the totals and the time taken.
    pub(super) fn finish(mut self) -> (u64, u64, Duration) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        (
            self.counters.bytes(),
            self.counters.objects(),
            self.started.elapsed(),
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `bytes` over `elapsed` as a human rate.
pub(super) fn rate(bytes: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(0.001);
    format!("{}/s", HumanBytes((bytes as f64 / seconds) as u64))
}

/// A store that forwards everything and counts what is written.
pub(super) struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

impl CountingStore {
    pub(super) fn new(inner: Arc<dyn ObjectStore>, counters: Arc<Counters>) -> Self {
        CountingStore { inner, counters }
    }
}

impl fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let len = payload.content_length() as u64;
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.counters.bytes.fetch_add(len, Ordering::Relaxed);
        self.counters.objects.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner: upload,
            counters: Arc::clone(&self.counters),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// A multipart upload whose parts are counted once written.
#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<Counters>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        let part = self.inner.put_part(data);
        let counters = Arc::clone(&self.counters);
        Box::pin(async move {
            part.await?;
            counters.bytes.fetch_add(len, Ordering::Relaxed);
            Ok(())
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.inner.complete().await?;
        self.counters.objects.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
