//! [`WriteQueue`]: the HTTP handlers' writes go to the store in batches. Update-check sightings
//! go to memory at once and to the store off the request path; the writes a request must not
//! acknowledge before they are stored ([`WriteQueue::commit`]) wait for the commit of a batch of
//! their own: each transaction takes every request that came while the one before it ran (group
//! commit).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use super::{DeviceMemory, DeviceSeen, DeviceStore, StoreError, Write, recent::RecentSightings};

/// The update server's queue capacity: eight batches (about 2.5 s of sightings at the
/// benchmark's top rate; some 14 MiB at most, as sightings are packed), so a moment of the
/// database falling behind (a checkpoint, a CPU-starved writer) drops nothing.
pub const SERVER_QUEUE_CAPACITY: usize = 65_536;
/// The update server's largest batch: one transaction of multi-row upserts. Large batches
/// matter: random device ids touch pages all over the primary-key index, and a page touched by
/// many rows of one transaction is written once (8,192 rows per transaction wrote about twice
/// as many rows per second as 2,048).
pub const SERVER_MAX_BATCH: usize = 8_192;
/// How long the update server lets a write wait for others before writing its batch.
pub const SERVER_FLUSH_EVERY: Duration = Duration::from_millis(200);

/// After this many sightings appended to the log, the flusher merges the log into the devices'
/// rows (see [`DeviceStore::compact`]): the larger the compaction, the fewer times each page of
/// `devices` is written (262,144 merged at about half the cost per sighting of 65,536).
pub const COMPACT_AFTER_SIGHTINGS: usize = 262_144;
/// How often the flusher takes the writes that came while a batch is open.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// The flusher also merges the log once nothing has come for this long.
pub const COMPACT_WHEN_IDLE: Duration = Duration::from_millis(250);

/// The first pause after a failed batch; it doubles with each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two tries of a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// After this many failures in a row, the batch is tried one write at a time, so that a write
/// the database rejects (while it answers) is dropped instead of blocking every other.
const ISOLATE_AFTER_FAILURES: u32 = 3;

/// The bounded queue the HTTP handlers push writes into: the update check never waits on a write.
///
/// Its capacity bounds the writes not yet written, including those of the batch being written
/// or retried: while the database is down, the queue fills up and further writes are dropped
/// (and counted), rather than memory growing without bound. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WriteQueue {
    sender: mpsc::UnboundedSender<QueueMessage>,
    /// To the committer task, which commits what requests acknowledge.
    commits: mpsc::UnboundedSender<CommitRequest>,
    memory: DeviceMemory,
    state: Arc<QueueState>,
}

/// What goes to the flusher. Small on purpose: the queue holds up to its capacity of these.
#[derive(Debug)]
enum QueueMessage {
    /// A device sighting (nearly every write), packed.
    Seen(PackedSeen),
    /// Any other write to batch (rare; boxed so that it does not size every message).
    Write(Box<Write>),
    /// Write everything received so far, then answer.
    Flush(oneshot::Sender<()>),
}

/// One request's writes that must be committed before it is acknowledged, all or none.
#[derive(Debug)]
struct CommitRequest {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), CommitError>>,
}

/// Why writes were not committed (nothing of them is stored; the caller answers so that the
/// client sends them again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The database cannot be reached, or the queue is full or stopped: try again later.
    #[error("the device store cannot commit now")]
    Unavailable,
    /// The database answers but refused these writes (twice).
    #[error("the device store refused the writes")]
    Refused,
    /// No commit within the time the caller waits (the database is slow or stuck).
    #[error("the device store did not commit in time")]
    TimedOut,
}

/// A [`DeviceSeen`] as it waits in the queue: its eight strings in one allocation, about half
/// the memory of the unpacked record (which makes room for a deeper queue).
#[derive(Debug)]
struct PackedSeen {
    /// app_id, device_id, platform, plugin_version, native_version, version_name, custom_id,
    /// default_channel, one after the other.
    text: Box<str>,
    /// Where each of the eight ends in `text`.
    ends: [u16; 8],
    /// Bit 0: is_prod; bit 1: is_emulator; bit 2: custom_id is set; bit 3: default_channel is set;
    /// bit 4: creates_row.
    flags: u8,
    seen_at_ms: i64,
}

impl PackedSeen {
    /// Packs a sighting; None when its text is too long to index with u16 (never from a decoded
    /// request: its whole body is at most 64 KiB, JSON syntax included).
    fn pack(seen: &DeviceSeen) -> Option<Self> {
        let parts = [
            seen.app_id.as_str(),
            &seen.device_id,
            &seen.platform,
            &seen.plugin_version,
            &seen.native_version,
            &seen.version_name,
            seen.custom_id.as_deref().unwrap_or_default(),
            seen.default_channel.as_deref().unwrap_or_default(),
        ];
        let mut text = String::with_capacity(parts.iter().map(|part| part.len()).sum());
        let mut ends = [0u16; 8];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = u16::try_from(text.len()).ok()?;
        }
        let flags = u8::from(seen.is_prod)
            | u8::from(seen.is_emulator) << 1
            | u8::from(seen.custom_id.is_some()) << 2
            | u8::from(seen.default_channel.is_some()) << 3
            | u8::from(seen.creates_row) << 4;
        Some(Self {
            text: text.into_boxed_str(),
            ends,
            flags,
            seen_at_ms: seen.seen_at_ms,
        })
    }

    fn unpack(&self) -> DeviceSeen {
        let mut start = 0;
        let mut parts = self.ends.iter().map(|&end| {
            let end = end as usize;
            let part = self.text.get(start..end).unwrap_or_default().to_owned();
            start = end;
            part
        });
        let mut next = || parts.next().unwrap_or_default();
        let (app_id, device_id, platform, plugin_version, native_version, version_name) =
            (next(), next(), next(), next(), next(), next());
        let (custom_id, default_channel) = (next(), next());
        DeviceSeen {
            app_id,
            device_id,
            platform,
            plugin_version,
            native_version,
            version_name,
            custom_id: (self.flags & 4 != 0).then_some(custom_id),
            default_channel: (self.flags & 8 != 0).then_some(default_channel),
            is_prod: self.flags & 1 != 0,
            is_emulator: self.flags & 2 != 0,
            seen_at_ms: self.seen_at_ms,
            creates_row: self.flags & 16 != 0,
        }
    }
}

impl QueueMessage {
    fn of(write: Write) -> Self {
        match write {
            Write::SeenDevice(seen) => match PackedSeen::pack(&seen) {
                Some(packed) => QueueMessage::Seen(packed),
                None => QueueMessage::Write(Box::new(Write::SeenDevice(seen))),
            },
            other => QueueMessage::Write(Box::new(other)),
        }
    }
}

/// Counters shared by the queue's clones and its flusher.
#[derive(Debug)]
struct QueueState {
    /// At most this many writes waiting.
    capacity: usize,
    /// Writes pushed and not yet written (nor rejected).
    pending: AtomicUsize,
    /// Writes dropped because the queue was full or its flusher had stopped.
    dropped: AtomicU64,
    /// Writes the database refused on their own while it answered other writes.
    rejected: AtomicU64,
    /// Whether the flusher is retrying a batch the database did not take: commits are refused at
    /// once meanwhile rather than waiting behind it.
    retrying: AtomicBool,
    /// Sightings not written because the device's row was written lately and would change only
    /// its `last_seen_ms` (see [`super::SIGHTING_REWRITE_WINDOW`]).
    skipped: AtomicU64,
    /// Device rows written lately.
    recent: RecentSightings,
    /// Why the store's last commit or batch failed, until one succeeds again (for readiness).
    failure: std::sync::Mutex<Option<String>>,
}

impl QueueState {
    /// Marks `n` pending writes as done (written or rejected).
    fn done(&self, n: usize) {
        // Never below zero, whatever happens.
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                Some(pending.saturating_sub(n))
            });
    }

    /// Records the outcome of a commit or a batch: an error makes the store failing, a success
    /// makes it healthy again.
    fn record(&self, outcome: Result<(), &StoreError>) {
        let failure = outcome.err().map(ToString::to_string);
        // A poisoned lock still holds a usable value: a reason string.
        *self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = failure;
    }
}

impl WriteQueue {
    /// Starts the flusher task: batches up to `max_batch` writes or every `flush_every`, applies them with
    /// DeviceStore::apply, retries a failed batch with backoff (logging each failure with tracing::warn!),
    /// and keeps going. Returns the queue and the flusher's JoinHandle.
    ///
    /// A batch is written when it reaches `max_batch` writes, `flush_every` after its first write,
    /// or on [`WriteQueue::flush`]. A batch that keeps failing while the database answers other
    /// queries is tried one write at a time, and the writes that fail alone are dropped with a
    /// warning (see [`WriteQueue::rejected`]). The flusher ends, after writing what it holds,
    /// once every clone of the queue is dropped. A `capacity` or `max_batch` of 0 counts as 1.
    /// Must be called within a Tokio runtime.
    pub fn start(
        store: DeviceStore,
        memory: DeviceMemory,
        capacity: usize,
        max_batch: usize,
        flush_every: Duration,
    ) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let state = Arc::new(QueueState {
            capacity: capacity.max(1),
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retrying: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
            recent: RecentSightings::default(),
            failure: std::sync::Mutex::new(None),
        });
        let (commits, commit_requests) = mpsc::unbounded_channel();
        let committer = Committer {
            store: store.clone(),
            memory: memory.clone(),
            state: state.clone(),
        };
        tokio::spawn(committer.run(commit_requests));
        let flusher = Flusher {
            store,
            state: state.clone(),
            max_batch: max_batch.max(1),
            flush_every,
            // A log left by an earlier process is merged at the first quiet moment.
            appended: 1,
            compaction: None,
        };
        let handle = tokio::spawn(flusher.run(receiver));
        (
            WriteQueue {
                sender,
                commits,
                memory,
                state,
            },
            handle,
        )
    }

    /// Updates memory at once (so the next request sees it) and enqueues the write without waiting.
    /// When the queue is full the write is dropped and counted; returns false.
    ///
    /// Memory is updated even when the write is dropped: what a device reported holds for this
    /// process either way; only its persistence is lost.
    ///
    /// A device sighting that would change only the row's `last_seen_ms`, the row having been
    /// written less than [`super::SIGHTING_REWRITE_WINDOW`] before, is skipped (and counted, see
    /// [`WriteQueue::skipped`]); returns true.
    pub fn push(&self, write: Write) -> bool {
        self.memory.apply(&write);
        let sighting = match &write {
            Write::SeenDevice(seen) => Some(self.state.recent.key(seen)),
            _ => None,
        };
        if let Some(key) = sighting
            && self.state.recent.is_redundant(key)
        {
            self.state.skipped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let capacity = self.state.capacity;
        let reserved = self
            .state
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                (pending < capacity).then_some(pending + 1)
            })
            .is_ok();
        // A sighting that may not create the row must not make a creating one look redundant.
        let creates_row = matches!(&write, Write::SeenDevice(seen) if seen.creates_row);
        if reserved && self.sender.send(QueueMessage::of(write)).is_ok() {
            if let Some(key) = sighting.filter(|_| creates_row) {
                self.state.recent.written(key);
            }
            return true;
        }
        if reserved {
            self.state.done(1);
        }
        let dropped = self.state.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // One warning per power of two, so an overload does not flood the log.
        if dropped.is_power_of_two() {
            tracing::warn!(
                dropped,
                capacity,
                flusher_running = reserved,
                "device store write queue full or stopped: writes dropped"
            );
        }
        false
    }

    /// Commits `writes` to the database in one transaction, with those of other requests that
    /// came while the transaction before it ran, and returns once they are committed (SQLite's WAL synced,
    /// or a PostgreSQL commit); then memory holds them too. Waits at most `timeout`.
    ///
    /// Nothing of `writes` is stored when this fails, except after [`CommitError::TimedOut`]:
    /// writes already in the transaction that was committing then may still be stored (a
    /// request that gave up before its turn is skipped), so a client that sends them again may
    /// see them counted twice: at least once, never lost.
    pub async fn commit(&self, writes: Vec<Write>, timeout: Duration) -> Result<(), CommitError> {
        if writes.is_empty() {
            return Ok(());
        }
        if self.state.retrying.load(Ordering::Acquire) {
            return Err(CommitError::Unavailable);
        }
        let count = writes.len();
        let capacity = self.state.capacity;
        self.state
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                (pending + count <= capacity).then_some(pending + count)
            })
            .map_err(|_| CommitError::Unavailable)?;
        let (done, committed) = oneshot::channel();
        let request = CommitRequest { writes, done };
        if self.commits.send(request).is_err() {
            self.state.done(count);
            return Err(CommitError::Unavailable);
        }
        match tokio::time::timeout(timeout, committed).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(CommitError::Unavailable),
            Err(_) => Err(CommitError::TimedOut),
        }
    }

    /// Writes dropped because the queue was full (or, after a crash, its flusher had stopped).
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Sightings skipped because they would change only a row's `last_seen_ms`, written lately.
    pub fn skipped(&self) -> u64 {
        self.state.skipped.load(Ordering::Relaxed)
    }

    /// Writes the database refused on their own (bad data) and that were dropped.
    pub fn rejected(&self) -> u64 {
        self.state.rejected.load(Ordering::Relaxed)
    }

    /// Writes waiting in the queue (pushed or to commit, not yet written nor rejected); at most
    /// [`WriteQueue::capacity`].
    pub fn pending(&self) -> usize {
        self.state.pending.load(Ordering::Relaxed)
    }

    /// The most writes the queue holds.
    pub fn capacity(&self) -> usize {
        self.state.capacity
    }

    /// Why the store cannot write now (the error of its last commit or batch), or None once a
    /// commit or batch succeeded again: readiness reports it.
    pub fn store_failure(&self) -> Option<String> {
        self.state
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until everything pushed so far is written (for shutdown and tests).
    ///
    /// Writes the database rejected (see [`WriteQueue::rejected`]) count as done. While the
    /// database is unreachable this waits for it: bound it with a timeout at shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, written) = oneshot::channel();
        self.sender
            .send(QueueMessage::Flush(done))
            .map_err(|_| StoreError::QueueStopped)?;
        written.await.map_err(|_| StoreError::QueueStopped)
    }
}

/// The task that commits what requests acknowledge, apart from the flusher, so that a large
/// batch of sightings being written never holds up an acknowledgement (on SQLite the two still
/// take turns at the file).
struct Committer {
    store: DeviceStore,
    /// Where committed writes go once committed (before their request is answered).
    memory: DeviceMemory,
    state: Arc<QueueState>,
}

impl Committer {
    /// Group commits until every clone of the queue is dropped: each transaction takes every
    /// request waiting when it starts, so the requests that came while one ran share the next
    /// one's sync, and a lone request waits for nobody. (A fixed 2 ms wait for others to join,
    /// tried first, reached 0.38 of the asynchronous path with 64 requests in flight in the
    /// durability bench; without it, 1.10.)
    async fn run(self, mut receiver: mpsc::UnboundedReceiver<CommitRequest>) {
        let mut commits: Vec<CommitRequest> = Vec::new();
        while receiver.recv_many(&mut commits, 4096).await > 0 {
            while let Ok(request) = receiver.try_recv() {
                commits.push(request);
            }
            self.group_commit(&mut commits).await;
        }
    }

    /// Commits the waiting requests' writes in one transaction, puts them in memory, and answers
    /// each. When that fails while the database answers, each request is tried alone. Requests
    /// whose caller stopped waiting are skipped. Empties `commits`.
    async fn group_commit(&self, commits: &mut Vec<CommitRequest>) {
        let mut requests = std::mem::take(commits);
        let total: usize = requests.iter().map(|request| request.writes.len()).sum();
        requests.retain(|request| !request.done.is_closed());
        let writes: Vec<Write> = requests
            .iter()
            .flat_map(|request| request.writes.iter().cloned())
            .collect();
        let all = self.store.apply_numbered(&writes).await;
        if !writes.is_empty() {
            self.state.record(all.as_ref().map(drop));
        }
        match all {
            Ok(numbers) => {
                self.remember(&writes, &numbers);
                for request in requests {
                    let _ = request.done.send(Ok(()));
                }
            }
            Err(error) if error.is_transient() || !self.store.is_reachable().await => {
                tracing::warn!(%error, requests = requests.len(), "a group commit to the device store failed");
                for request in requests {
                    let _ = request.done.send(Err(CommitError::Unavailable));
                }
            }
            Err(error) => {
                tracing::warn!(%error, requests = requests.len(), "a group commit to the device store failed; each request is tried alone");
                self.commit_one_by_one(requests).await;
            }
        }
        self.state.done(total);
    }

    /// Puts committed writes in memory, with the numbers the change feed gave them.
    fn remember(&self, writes: &[Write], numbers: &[Option<i64>]) {
        for (write, number) in writes.iter().zip(numbers) {
            self.memory.apply_committed(write, *number);
        }
    }

    /// Commits each request alone (twice at most), so that writes the database refuses fail
    /// only their own request.
    async fn commit_one_by_one(&self, requests: Vec<CommitRequest>) {
        for request in requests {
            let mut outcome = self.store.apply_numbered(&request.writes).await;
            if outcome.is_err() {
                outcome = self.store.apply_numbered(&request.writes).await;
            }
            self.state.record(outcome.as_ref().map(drop));
            let answer = match outcome {
                Ok(numbers) => {
                    self.remember(&request.writes, &numbers);
                    Ok(())
                }
                Err(error) if !error.is_transient() && self.store.is_reachable().await => {
                    self.state.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, writes = ?request.writes, "the device store refused a request's writes");
                    Err(CommitError::Refused)
                }
                Err(_) => Err(CommitError::Unavailable),
            };
            let _ = request.done.send(answer);
        }
    }
}

/// The task that writes batches.
struct Flusher {
    store: DeviceStore,
    state: Arc<QueueState>,
    max_batch: usize,
    flush_every: Duration,
    /// Sightings appended to the log since its last compaction started (at least).
    appended: usize,
    /// The compaction running beside the flusher, if any.
    compaction: Option<JoinHandle<()>>,
}

impl Flusher {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<QueueMessage>) {
        let mut batch: Vec<Write> = Vec::new();
        let mut inbox: Vec<QueueMessage> = Vec::with_capacity(self.max_batch);
        // When the current batch is due (set by its first write).
        let mut due: Option<Instant> = None;
        let mut open = true;
        while open {
            match due {
                // Nothing waiting: sleep until a write comes (or the log is due a compaction).
                None => {
                    let received = if self.appended > 0 {
                        tokio::select! {
                            received = receiver.recv_many(&mut inbox, self.max_batch) => received,
                            () = tokio::time::sleep(COMPACT_WHEN_IDLE) => {
                                self.compact();
                                continue;
                            }
                        }
                    } else {
                        receiver.recv_many(&mut inbox, self.max_batch).await
                    };
                    open = received > 0;
                }
                // A batch is open: take what came every DRAIN_EVERY rather than being woken by
                // each write (at the benchmark's rate, a wake-up per write cost more than the
                // write).
                Some(due_at) => {
                    tokio::time::sleep_until(due_at.min(Instant::now() + DRAIN_EVERY)).await;
                    while inbox.len() < self.max_batch {
                        match receiver.try_recv() {
                            Ok(message) => inbox.push(message),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                open = false;
                                break;
                            }
                        }
                    }
                }
            }
            for message in inbox.drain(..) {
                let write = match message {
                    QueueMessage::Seen(packed) => Write::SeenDevice(packed.unpack()),
                    QueueMessage::Write(write) => *write,
                    QueueMessage::Flush(done) => {
                        self.write_out(&mut batch).await;
                        due = None;
                        // The caller may have given up waiting; nothing to do then.
                        let _ = done.send(());
                        continue;
                    }
                };
                if batch.is_empty() {
                    due = Some(Instant::now() + self.flush_every);
                }
                batch.push(write);
                if batch.len() >= self.max_batch {
                    self.write_out(&mut batch).await;
                    due = None;
                }
            }
            if due.is_some_and(|due_at| due_at <= Instant::now()) {
                self.write_out(&mut batch).await;
                due = None;
            }
        }
        self.write_out(&mut batch).await;
        tracing::debug!("device store write queue closed: flusher done");
    }

    /// Starts merging the sightings log into the devices' rows in a task of its own, so the
    /// flusher keeps appending meanwhile (unless a compaction is still running: then the next
    /// trigger starts one). A failed compaction is logged; its rows wait for the next one.
    fn compact(&mut self) {
        if self.compaction.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let store = self.store.clone();
        self.compaction = Some(tokio::spawn(async move {
            if let Err(error) = store.compact().await {
                tracing::warn!(%error, "merging the sightings log failed; it is tried again later");
            }
        }));
        self.appended = 0;
    }

    /// Writes the batch, retrying until every write is written or rejected; empties it; then
    /// merges the sightings log when it has grown enough.
    async fn write_out(&mut self, batch: &mut Vec<Write>) {
        let sightings = batch
            .iter()
            .filter(|write| matches!(write, Write::SeenDevice(_)))
            .count();
        self.write_batch(batch).await;
        self.appended = self.appended.saturating_add(sightings);
        if self.appended >= COMPACT_AFTER_SIGHTINGS {
            self.compact();
        }
    }

    /// Writes the batch, retrying until every write is written or rejected; empties it.
    async fn write_batch(&self, batch: &mut Vec<Write>) {
        let total = batch.len();
        let mut failures: u32 = 0;
        while !batch.is_empty() {
            let outcome = self.store.apply(batch).await;
            self.state.record(outcome.as_ref().map(drop));
            let Err(error) = outcome else {
                break;
            };
            failures += 1;
            self.state.retrying.store(true, Ordering::Release);
            tracing::warn!(%error, writes = batch.len(), failures, "writing a batch to the device store failed; retrying");
            // A full disk or a lost connection fails every write alike: the batch waits whole.
            if failures >= ISOLATE_AFTER_FAILURES && !error.is_transient() {
                self.isolate(batch).await;
                if batch.is_empty() {
                    break;
                }
            }
            let backoff = FIRST_BACKOFF
                .saturating_mul(2u32.saturating_pow(failures - 1))
                .min(MAX_BACKOFF);
            tokio::time::sleep(backoff).await;
        }
        self.state.retrying.store(false, Ordering::Release);
        batch.clear();
        self.state.done(total);
    }

    /// Tries the writes one at a time. Those written leave the batch; one that fails twice
    /// while the database answers is rejected (dropped, counted); the first that fails while
    /// the database does not answer stops the round, and it and the rest stay for the next try.
    async fn isolate(&self, batch: &mut Vec<Write>) {
        let mut remaining = Vec::new();
        let mut writes = std::mem::take(batch).into_iter();
        for write in writes.by_ref() {
            let Err(first_error) = self.store.apply(std::slice::from_ref(&write)).await else {
                continue;
            };
            if first_error.is_transient() || !self.store.is_reachable().await {
                remaining.push(write);
                break;
            }
            // The database answers: one more try, in case the failure was a passing one.
            let Err(error) = self.store.apply(std::slice::from_ref(&write)).await else {
                tracing::debug!(error = %first_error, "a write failed once, then was written");
                continue;
            };
            if !error.is_transient() && self.store.is_reachable().await {
                self.state.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, ?write, "the device store rejected a write; dropped");
            } else {
                remaining.push(write);
                break;
            }
        }
        remaining.extend(writes);
        *batch = remaining;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(custom_id: Option<&str>, default_channel: Option<&str>) -> DeviceSeen {
        DeviceSeen {
            app_id: "com.example.shop".into(),
            device_id: "6f0e2f2a-3b1c-4c55-9a7e-2d7f0c9b1a11".into(),
            platform: "android".into(),
            plugin_version: "8.51.14".into(),
            native_version: "1.4.0".into(),
            version_name: "1.4.3".into(),
            custom_id: custom_id.map(str::to_owned),
            default_channel: default_channel.map(str::to_owned),
            is_prod: true,
            is_emulator: false,
            seen_at_ms: 1_790_000_000_000,
            creates_row: true,
        }
    }

    #[test]
    fn a_packed_sighting_unpacks_to_the_same_sighting() {
        let cases = [
            seen(None, None),
            seen(Some(""), Some("beta")),
            seen(Some("customer-42"), None),
            DeviceSeen {
                is_prod: false,
                is_emulator: true,
                platform: String::new(),
                app_id: "é.ü".into(),
                ..seen(Some("ß"), Some(""))
            },
        ];
        for original in cases {
            let packed = PackedSeen::pack(&original).expect("packs");
            assert_eq!(packed.unpack(), original);
        }
    }

    async fn stored_row(store: &DeviceStore, seen: &DeviceSeen) -> crate::devices::DeviceRecord {
        store
            .device(&seen.app_id, &seen.device_id)
            .await
            .expect("read")
            .expect("a row")
    }

    #[tokio::test]
    async fn a_device_checking_again_with_nothing_new_costs_no_write() {
        let store = DeviceStore::open("sqlite::memory:").await.expect("store");
        let (queue, _flusher) = WriteQueue::start(
            store.clone(),
            DeviceMemory::empty(),
            100,
            100,
            Duration::from_secs(3600),
        );
        let first = seen(None, None);
        let t = first.seen_at_ms;
        let minute = 60_000;
        let at = |seen: &DeviceSeen, ms: i64| {
            Write::SeenDevice(DeviceSeen {
                seen_at_ms: ms,
                ..seen.clone()
            })
        };
        assert!(queue.push(at(&first, t)));
        assert!(queue.push(at(&first, t + minute)));
        assert!(queue.push(at(&first, t + 4 * minute)));
        assert_eq!(queue.skipped(), 2);
        queue.flush().await.expect("flush");
        assert_eq!(stored_row(&store, &first).await.last_seen_ms, t);

        // A change is written at once; so is the same row once the window has passed.
        let updated = DeviceSeen {
            version_name: "1.4.4".into(),
            ..first.clone()
        };
        assert!(queue.push(at(&updated, t + 4 * minute + 1)));
        queue.flush().await.expect("flush");
        let record = stored_row(&store, &first).await;
        assert_eq!(
            (record.version_name.as_str(), record.last_seen_ms),
            ("1.4.4", t + 4 * minute + 1)
        );
        let window = i64::try_from(super::super::SIGHTING_REWRITE_WINDOW.as_millis()).unwrap();
        assert!(queue.push(at(&updated, t + 4 * minute + window)));
        assert_eq!(queue.skipped(), 3, "less than the window after the last write");
        assert!(queue.push(at(&updated, t + 4 * minute + 1 + window)));
        queue.flush().await.expect("flush");
        assert_eq!(
            stored_row(&store, &first).await.last_seen_ms,
            t + 4 * minute + 1 + window
        );
        assert_eq!(queue.skipped(), 3);
        assert_eq!(
            store.monthly_active_devices(&first.app_id, t).await.expect("MAU"),
            1
        );
    }

    #[test]
    fn a_message_is_small() {
        // The queue holds up to its capacity of messages: a sighting must not size them.
        assert!(
            std::mem::size_of::<QueueMessage>() <= 64,
            "{} bytes",
            std::mem::size_of::<QueueMessage>()
        );
        assert!(matches!(
            QueueMessage::of(Write::SeenDevice(seen(None, None))),
            QueueMessage::Seen(_)
        ));
        // Text too long to pack still goes through, unpacked.
        let huge = DeviceSeen {
            device_id: "d".repeat(70_000),
            ..seen(None, None)
        };
        match QueueMessage::of(Write::SeenDevice(huge.clone())) {
            QueueMessage::Write(write) => assert_eq!(*write, Write::SeenDevice(huge)),
            other => panic!("packed what cannot be indexed: {other:?}"),
        }
    }
}
