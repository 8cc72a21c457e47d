//! Benchmark of bundle sync (`ota_operator::sync::sync_bundle`, then the Brotli variants of
//! `ota_operator::sync::compress_variants`) against `sha256sum` plus `cp` of the same zip, in one
//! run on one machine (issue 4's targets: peak RSS ≤ 64 MiB, wall time to Synced ≤ 1.5 × the
//! baseline; the time until the variants are done is reported beside it).
//!
//! `cargo bench --bench bundle_sync` (or `tests/bench/bundle_sync.sh`, which also starts a real
//! S3 server) runs the driver. The same binary plays two roles, chosen by `OTA_BENCH_ROLE` (or a
//! first argument of the same name):
//!
//! - `driver` (the default under `--bench`): generates a deterministic bundle (a ~200 MB zip of
//!   3,000 files, kept under `target/bench/bundle_sync/` and regenerated only when the generator
//!   changes), waits for the machine to be idle, then runs rounds of the baseline (`sha256sum
//!   ZIP`, then `cp ZIP DEST` on the same disk) and of ota's sync into a fresh, empty filesystem
//!   storage, each as child processes, and takes medians; then, when an S3 server is given
//!   (`OTA_TEST_S3_*`, as `tests/s3/s3.sh start` prints them), rounds of the sync into S3 (a
//!   fresh prefix each time). It prints a report with PASS/MISS per target and exits non-zero
//!   only when something failed to run.
//! - `sync`: one sync in a process of its own, so its peak RSS (VmHWM) is the sync's alone: the
//!   zip `OTA_BENCH_ZIP` (sha256 `OTA_BENCH_SHA256`) from a local file source into filesystem
//!   storage at `OTA_BENCH_FS_STORE`, or into S3 under the prefix `OTA_BENCH_S3_PREFIX`, then its
//!   Brotli variants. It prints `SYNCED` as soon as the first step returns (the bundle is
//!   servable; the driver times that line), then one `RESULT {json}` line: wall and CPU time,
//!   VmHWM, what was synced, and the time of each debug event of the sync (its phases).
//!
//! Without `--bench` (what `cargo test --benches` passes) the binary only generates a small bundle
//! with the same generator and syncs it in-process, as a smoke test.
//!
//! The generated bundle: `index.html` at the root; 2,399 text files (JavaScript, CSS, HTML,
//! JSON and SVG written from per-file vocabularies, so they compress about as much as real
//! minified assets), 0.5 KiB to 256 KiB each plus twelve vendor chunks of 1 to 6 MiB; and 600
//! incompressible images and fonts (PNG, JPEG, WebP, WOFF2) of 4 KiB to 2 MiB. Every entry is
//! deflated, in a shuffled order.
//!
//! Settings (environment): `OTA_BENCH_ROUNDS` (5: baseline and filesystem rounds),
//! `OTA_BENCH_S3_ROUNDS` (3), `OTA_BENCH_IDLE_WAIT_SECONDS` (300: how long the driver first waits
//! for the machine to be idle), `OTA_BENCH_RETRIES` (2: how many times a round disturbed by other
//! processes is run again), `OTA_BENCH_WORK_DIR` (target/bench/bundle_sync), `OTA_BENCH_S3_PID`
//! (the S3 server's pid, whose CPU then counts as the benchmark's own, not as another
//! process's).

mod common;

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use common::{cpu_of, env_number, machine_cpu, median, mib, verdict};
use ota_operator::{
    api::app::{FilesystemStorage, S3Storage, StorageSpec},
    storage::{self, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, Credentials},
    sync::{self, BundleSourceRef, SyncLimits, SyncRequest, SyncedBundle},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing_subscriber::{Layer, filter::Targets, layer::SubscriberExt};
use zip::{ZipWriter, write::SimpleFileOptions};

const ROLE_ENV: &str = "OTA_BENCH_ROLE";

// Targets of the issue (for the filesystem run).
const TARGET_WALL_RATIO: f64 = 1.5;
const TARGET_RSS_MIB: f64 = 64.0;
/// A round during which other processes took more than this share of the machine's CPU is run
/// again (`OTA_BENCH_RETRIES` times at most), and the report flags it.
const FOREIGN_LIMIT: f64 = 0.10;

fn main() -> ExitCode {
    let first_arg = std::env::args().nth(1);
    let role = std::env::var(ROLE_ENV)
        .ok()
        .or_else(|| first_arg.filter(|a| ["driver", "sync", "brotli-levels"].contains(&a.as_str())));
    let result = match role.as_deref() {
        Some("sync") => run_sync_child(),
        Some("brotli-levels") => run_brotli_levels(),
        Some("driver") => run_driver(),
        _ if std::env::args().any(|a| a == "--bench") => run_driver(),
        _ => smoke(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "bundle_sync bench ({}): {error:#}",
                role.as_deref().unwrap_or("driver")
            );
            ExitCode::FAILURE
        }
    }
}

fn env_required(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

// ---------------------------------------------------------------------------------------------
// The generated bundle

/// Bump when the generator's output changes, so a cached bundle is regenerated.
const GENERATOR_VERSION: u32 = 2;
const TEXT_FILES: usize = 2_399;
const VENDOR_CHUNKS: usize = 12;
const BINARY_FILES: usize = 600;
/// Bytes of all the images and fonts together (set so that the full zip is about 200 MB).
const BINARY_BYTES: f64 = 150_000_000.0;

/// SplitMix64: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn log_uniform(&mut self, low: f64, high: f64) -> f64 {
        (low.ln() + self.unit() * (high / low).ln()).exp()
    }

    /// An index below `n`, small ones far more likely (words in real code are Zipf-like).
    fn skewed(&mut self, n: usize) -> usize {
        ((self.unit().powi(3) * n as f64) as usize).min(n.saturating_sub(1))
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "re", "tu", "an", "be", "co", "de", "el", "fi", "ge", "ha", "in", "jo", "ul", "vo",
    "wa", "xe", "yo", "zi", "st", "pr", "th", "ng", "qu", "ar", "os", "um", "ix",
];
const KEYWORDS: &[&str] = &[
    "function",
    "return",
    "this",
    "null",
    "void 0",
    "length",
    "prototype",
    "new",
    "typeof",
    "undefined",
    "Object",
    "Array",
    "Promise",
    "async",
    "await",
    "true",
    "false",
    "default",
    "props",
    "state",
];
const CSS_PROPERTIES: &[&str] = &[
    "color",
    "margin",
    "padding",
    "display",
    "width",
    "height",
    "border",
    "font-size",
    "line-height",
    "background",
    "position",
    "top",
    "left",
    "z-index",
    "opacity",
    "transform",
    "flex",
    "gap",
];

fn word(rng: &mut Rng) -> String {
    let syllables = 1 + rng.below(3);
    let mut word = String::new();
    for _ in 0..syllables {
        word.push_str(SYLLABLES[rng.below(SYLLABLES.len())]);
    }
    word
}

/// A file's vocabulary: identifiers, some camelCase, some with digits.
fn vocabulary(rng: &mut Rng, size: usize) -> Vec<String> {
    (0..size)
        .map(|_| {
            let mut name = word(rng);
            match rng.below(4) {
                0 => {
                    let next = word(rng);
                    let mut chars = next.chars();
                    if let Some(first) = chars.next() {
                        name.push(first.to_ascii_uppercase());
                        name.extend(chars);
                    }
                }
                1 => name.push_str(&rng.below(100).to_string()),
                _ => {}
            }
            name
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Js,
    Css,
    Html,
    Json,
    Svg,
}

impl TextKind {
    fn extension(self) -> &'static str {
        match self {
            TextKind::Js => "js",
            TextKind::Css => "css",
            TextKind::Html => "html",
            TextKind::Json => "json",
            TextKind::Svg => "svg",
        }
    }

    fn folder(self) -> &'static str {
        match self {
            TextKind::Js => "assets/js",
            TextKind::Css => "assets/css",
            TextKind::Html => "views",
            TextKind::Json => "i18n",
            TextKind::Svg => "assets/icons",
        }
    }
}

/// Mostly small numbers, as in real code.
fn number(rng: &mut Rng) -> String {
    match rng.below(16) {
        0..8 => rng.below(10).to_string(),
        8..13 => rng.below(256).to_string(),
        13..15 => format!("{}.{}", rng.below(10), rng.below(100)),
        _ => rng.below(1 << 20).to_string(),
    }
}

/// `fewest` to `fewest + spread - 1` words of the vocabulary.
fn words(rng: &mut Rng, vocabulary: &[String], fewest: usize, spread: usize) -> String {
    let count = fewest + rng.below(spread);
    (0..count)
        .map(|_| vocabulary[rng.skewed(vocabulary.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text of exactly `len` bytes that looks like (and compresses like) a minified web asset.
fn text(kind: TextKind, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let size = 200 + rng.below(1800);
    let vocab = vocabulary(&mut rng, size);
    let mut out = String::with_capacity(len + 256);
    let pick = |rng: &mut Rng| vocab[rng.skewed(vocab.len())].clone();
    while out.len() < len {
        let (a, b, c, d) = (pick(&mut rng), pick(&mut rng), pick(&mut rng), pick(&mut rng));
        let n = number(&mut rng);
        let piece = match kind {
            TextKind::Js => match rng.below(10) {
                0 => format!("function {a}({b},{c}){{return {b}.{d}({c},{n})}}"),
                1 => format!("var {a}={b}.{c}||{{}};"),
                2 => format!(
                    "if({a}.{b}==={n}){{{c}({d},\"{}\")}}",
                    words(&mut rng, &vocab, 1, 4)
                ),
                3 => format!("{a}.prototype.{b}=function({c}){{this.{d}={c}+{n};return this}};"),
                4 => format!(
                    "const {a}=[{n},{},{},\"{b}\"];",
                    number(&mut rng),
                    number(&mut rng)
                ),
                5 => format!("export{{{a} as {b}}};"),
                6 => format!("for(let i=0;i<{a}.length;i++){{{b}[i]={a}[i]*{n}}}"),
                7 => {
                    let keyword = KEYWORDS[rng.below(KEYWORDS.len())];
                    format!("{a}:{keyword},{b}:\"{}\",", words(&mut rng, &vocab, 2, 6))
                }
                8 if rng.below(8) == 0 => format!("/*#{:016x}*/", rng.next()),
                8 => format!(
                    "return {a}&&{a}.{b}?{a}.{b}({c}):{keyword}",
                    keyword = KEYWORDS[rng.below(KEYWORDS.len())]
                ),
                _ => "\n".to_owned(),
            },
            TextKind::Css => {
                let property = |rng: &mut Rng| CSS_PROPERTIES[rng.below(CSS_PROPERTIES.len())];
                format!(
                    ".{a}-{b} .{c}{{{}:{n}px;{}:#{:06x};{}:{}}}\n",
                    property(&mut rng),
                    property(&mut rng),
                    rng.next() & 0xFF_FFFF,
                    property(&mut rng),
                    d
                )
            }
            TextKind::Html => format!(
                "<div class=\"{a} {b}\" id=\"{c}{n}\"><p>{}</p><a href=\"/{d}\">{}</a></div>\n",
                words(&mut rng, &vocab, 3, 12),
                words(&mut rng, &vocab, 1, 3)
            ),
            TextKind::Json => format!("\"{a}.{b}.{c}\":\"{}\",\n", words(&mut rng, &vocab, 2, 10)),
            TextKind::Svg => format!(
                "<path d=\"M{n} {}C{} {} {} {} {} {}\" fill=\"#{:06x}\"/>\n",
                number(&mut rng),
                number(&mut rng),
                number(&mut rng),
                number(&mut rng),
                number(&mut rng),
                number(&mut rng),
                number(&mut rng),
                rng.next() & 0xFF_FFFF
            ),
        };
        out.push_str(&piece);
    }
    out.truncate(len);
    out.into_bytes()
}

/// Incompressible bytes of exactly `len`, after the format's signature.
fn binary(extension: &str, len: usize, seed: u64) -> Vec<u8> {
    let signature: &[u8] = match extension {
        "png" => b"\x89PNG\r\n\x1a\n",
        "jpg" => b"\xff\xd8\xff\xe0",
        "webp" => b"RIFF\0\0\0\0WEBP",
        _ => b"wOF2",
    };
    let mut rng = Rng(seed);
    let mut bytes = Vec::with_capacity(len + 8);
    bytes.extend_from_slice(signature);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// One file of the generated bundle (its content is generated when written).
struct PlannedFile {
    path: String,
    len: usize,
    seed: u64,
    content: Content,
}

enum Content {
    Text(TextKind),
    Binary(&'static str),
    Index,
}

/// What the bundle holds, in zip order.
fn plan(scale: f64) -> Vec<PlannedFile> {
    let mut rng = Rng(0x0b5e_55ed);
    let scaled = |len: f64| ((len * scale) as usize).max(64);
    let mut files = Vec::new();
    for i in 0..TEXT_FILES {
        let kind = match rng.below(100) {
            0..45 => TextKind::Js,
            45..60 => TextKind::Css,
            60..70 => TextKind::Html,
            70..90 => TextKind::Json,
            _ => TextKind::Svg,
        };
        let (kind, len) = if i < VENDOR_CHUNKS {
            (
                TextKind::Js,
                rng.log_uniform(1024.0 * 1024.0, 6.0 * 1024.0 * 1024.0),
            )
        } else {
            (kind, rng.log_uniform(512.0, 256.0 * 1024.0))
        };
        let name = word(&mut rng);
        files.push(PlannedFile {
            path: format!("{}/{name}-{i:04}.{}", kind.folder(), kind.extension()),
            len: scaled(len),
            seed: rng.next(),
            content: Content::Text(kind),
        });
    }
    let weights: Vec<f64> = (0..BINARY_FILES)
        .map(|_| rng.log_uniform(4.0 * 1024.0, 2.0 * 1024.0 * 1024.0))
        .collect();
    let total: f64 = weights.iter().sum();
    for (i, weight) in weights.into_iter().enumerate() {
        let extension = match rng.below(10) {
            0..5 => "png",
            5..8 => "jpg",
            8 => "webp",
            _ => "woff2",
        };
        let folder = if extension == "woff2" {
            "assets/fonts"
        } else {
            "assets/img"
        };
        let name = word(&mut rng);
        files.push(PlannedFile {
            path: format!("{folder}/{name}-{i:04}.{extension}"),
            len: scaled(weight / total * BINARY_BYTES),
            seed: rng.next(),
            content: Content::Binary(extension),
        });
    }
    // Shuffle (Fisher-Yates), then index.html first.
    for i in (1..files.len()).rev() {
        let j = rng.below(i + 1);
        files.swap(i, j);
    }
    files.insert(
        0,
        PlannedFile {
            path: "index.html".to_owned(),
            len: 2048,
            seed: rng.next(),
            content: Content::Index,
        },
    );
    files
}

/// What [`write_bundle`] wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct BundleInfo {
    generator: u32,
    sha256: String,
    zip_bytes: u64,
    files: usize,
    text_files: usize,
    text_bytes: u64,
    binary_files: usize,
    binary_bytes: u64,
}

/// Writes the bundle (`scale` 1.0: the full size) and returns what it holds.
fn write_bundle(path: &Path, scale: f64) -> anyhow::Result<BundleInfo> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut zip = ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut info = BundleInfo {
        generator: GENERATOR_VERSION,
        ..BundleInfo::default()
    };
    for planned in plan(scale) {
        let bytes = match planned.content {
            Content::Text(kind) => {
                info.text_files += 1;
                info.text_bytes += planned.len as u64;
                text(kind, planned.len, planned.seed)
            }
            Content::Binary(extension) => {
                info.binary_files += 1;
                info.binary_bytes += planned.len as u64;
                binary(extension, planned.len, planned.seed)
            }
            Content::Index => {
                let body = text(TextKind::Html, planned.len, planned.seed);
                let mut page =
                    b"<!doctype html><html><head><script src=\"assets/js/app.js\"></script></head><body>"
                        .to_vec();
                page.extend_from_slice(&body);
                page.extend_from_slice(b"</body></html>\n");
                page
            }
        };
        zip.start_file(planned.path.as_str(), options)?;
        zip.write_all(&bytes)?;
        info.files += 1;
    }
    zip.finish()?
        .into_inner()
        .context("flushing the zip")?
        .sync_all()?;
    let (sha256, zip_bytes) = sha256_file(path)?;
    info.sha256 = sha256;
    info.zip_bytes = zip_bytes;
    Ok(info)
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((hex::encode(hasher.finalize()), size));
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
}

/// The full-size bundle under `work`, generated unless an identical one is there already.
fn full_bundle(work: &Path) -> anyhow::Result<(PathBuf, BundleInfo)> {
    let zip = work.join("bundle.zip");
    let info_path = work.join("bundle.json");
    if let Ok(raw) = std::fs::read(&info_path)
        && let Ok(info) = serde_json::from_slice::<BundleInfo>(&raw)
        && info.generator == GENERATOR_VERSION
        && sha256_file(&zip).is_ok_and(|(sha, size)| sha == info.sha256 && size == info.zip_bytes)
    {
        eprintln!("reusing the generated bundle {}", zip.display());
        return Ok((zip, info));
    }
    eprintln!("generating the bundle {} (once)...", zip.display());
    let partial = work.join("bundle.zip.partial");
    let info = write_bundle(&partial, 1.0)?;
    std::fs::rename(&partial, &zip)?;
    std::fs::write(&info_path, serde_json::to_vec_pretty(&info)?)?;
    Ok((zip, info))
}

// ---------------------------------------------------------------------------------------------
// The sync, in a process of its own

/// What a `sync` child reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SyncReport {
    /// Seconds inside `sync_bundle` (from the child's start).
    sync_seconds: f64,
    /// Seconds until `compress_variants` returned (from the child's start).
    variants_seconds: f64,
    /// Peak resident memory when the first step returned, KiB.
    synced_hwm_kib: u64,
    /// CPU seconds (user + system) of the whole process.
    cpu_seconds: f64,
    /// Peak resident memory of the whole process (VmHWM), KiB.
    hwm_kib: u64,
    zip_size: u64,
    uncompressed_size: u64,
    file_count: u64,
    uploaded_files: u64,
    /// Files the final manifest names Brotli-compressed.
    brotli_files: u64,
    /// Files the first step's manifest names Brotli-compressed (only `*.br` names).
    synced_brotli_files: u64,
    /// Each debug event of the sync: its message and the seconds since the sync started.
    events: Vec<(String, f64)>,
}

/// Records the time of every event it sees (the sync's phases).
struct EventTimes {
    started: Instant,
    events: Arc<Mutex<Vec<(String, f64)>>>,
}

impl<S: tracing::Subscriber> Layer<S> for EventTimes {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let at = self.started.elapsed().as_secs_f64();
        if let Ok(mut events) = self.events.lock() {
            events.push((message.0, at));
        }
    }
}

fn self_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn run_sync_child() -> anyhow::Result<()> {
    let zip = PathBuf::from(env_required("OTA_BENCH_ZIP")?);
    let sha256 = env_required("OTA_BENCH_SHA256")?;
    let opened = if let Ok(folder) = std::env::var("OTA_BENCH_FS_STORE") {
        let spec = StorageSpec {
            filesystem: Some(FilesystemStorage {
                path: folder,
                persistent_volume_claim: None,
            }),
            ..StorageSpec::default()
        };
        storage::open(&spec, Path::new("/"), &Credentials::none())?
    } else {
        let prefix = env_required("OTA_BENCH_S3_PREFIX")?;
        let spec = StorageSpec {
            s3: Some(S3Storage {
                bucket: env_required("OTA_TEST_S3_BUCKET")?,
                region: std::env::var("OTA_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".to_owned()),
                endpoint: Some(env_required("OTA_TEST_S3_ENDPOINT")?),
                force_path_style: true,
                credentials_secret_ref: None,
            }),
            prefix: Some(prefix),
            ..StorageSpec::default()
        };
        let credentials = Credentials::from_map(BTreeMap::from([
            (
                AWS_ACCESS_KEY_ID.to_owned(),
                env_required("OTA_TEST_S3_ACCESS_KEY")?,
            ),
            (
                AWS_SECRET_ACCESS_KEY.to_owned(),
                env_required("OTA_TEST_S3_SECRET_KEY")?,
            ),
        ]));
        storage::open(&spec, Path::new("/"), &credentials)?
    };

    let events = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let layer = EventTimes {
        started,
        events: Arc::clone(&events),
    }
    .with_filter(Targets::new().with_target("ota_operator::sync", tracing::Level::DEBUG));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;

    // The runtime `ota` itself builds (a worker per CPU).
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let source = BundleSourceRef::File(zip);
    let limits = SyncLimits::default();
    let http = reqwest::Client::new();
    let synced: SyncedBundle = runtime.block_on(sync::sync_bundle(SyncRequest {
        source: &source,
        expected_sha256: &sha256,
        store: &opened.store,
        prefix: &opened.prefix,
        limits: &limits,
        http: &http,
    }))?;
    let sync_seconds = started.elapsed().as_secs_f64();
    // The bundle is servable now: tell the driver at once.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "SYNCED")?;
    stdout.flush()?;
    let synced_hwm_kib = self_status_kib("VmHWM:").context("cannot read VmHWM")?;
    let synced_brotli_files = synced.manifest.iter().filter(|f| f.key.ends_with(".br")).count() as u64;
    let variants = runtime.block_on(sync::compress_variants(
        &opened.store,
        &opened.prefix,
        &synced.sha256,
    ))?;
    let variants_seconds = started.elapsed().as_secs_f64();
    let synced = synced.with_variants(variants);
    drop(runtime);
    let report = SyncReport {
        sync_seconds,
        variants_seconds,
        synced_hwm_kib,
        cpu_seconds: cpu_of(std::process::id()).0,
        hwm_kib: self_status_kib("VmHWM:").context("cannot read VmHWM")?,
        zip_size: synced.zip_size,
        uncompressed_size: synced.uncompressed_size,
        file_count: synced.file_count,
        uploaded_files: synced.uploaded_files,
        brotli_files: synced.manifest.iter().filter(|f| f.key.ends_with(".br")).count() as u64,
        synced_brotli_files,
        events: events.lock().map(|e| e.clone()).unwrap_or_default(),
    };
    writeln!(stdout, "RESULT {}", serde_json::to_string(&report)?)?;
    Ok(())
}

/// Brotli's speed and output size at each quality on the bundle's text files, against their
/// deflated size in the zip (to dig into the sync's main cost).
fn run_brotli_levels() -> anyhow::Result<()> {
    let (zip, _) = full_bundle(&work_dir()?)?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(File::open(&zip)?))?;
    let mut texts = Vec::new();
    let mut deflated = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let name = entry.name()?.into_owned();
        let is_text = [".js", ".css", ".html", ".json", ".svg"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if is_text && entry.size() >= sync::BROTLI_MIN_SIZE {
            deflated += entry.compressed_size();
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes)?;
            texts.push(bytes);
        }
    }
    // Files named after the role replace the bundle's (e.g. real minified JavaScript, to check
    // that the generated text compresses like it).
    let named: Vec<String> = std::env::args().skip(2).filter(|a| a != "--bench").collect();
    if !named.is_empty() {
        texts = named.iter().map(std::fs::read).collect::<Result<_, _>>()?;
        deflated = 0;
        for text in &texts {
            let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(text)?;
            deflated += encoder.finish()?.len() as u64;
        }
    }
    let total: u64 = texts.iter().map(|t| t.len() as u64).sum();
    println!(
        "{} text files of 8 KiB or more: {:.1} MB, deflated to {:.1} MB",
        texts.len(),
        mb(total),
        mb(deflated)
    );
    let qualities = std::env::var("OTA_BENCH_QUALITIES").unwrap_or_else(|_| "1,2,3,4,5,6".to_owned());
    for quality in qualities.split(',') {
        let quality: u32 = quality.trim().parse().context("OTA_BENCH_QUALITIES")?;
        let cpu_before = cpu_of(std::process::id()).0;
        let mut out = 0u64;
        for text in &texts {
            let mut writer = brotli::CompressorWriter::new(Vec::new(), 64 * 1024, quality, 20);
            writer.write_all(text)?;
            out += writer.into_inner().len() as u64;
        }
        // CPU time, not wall time: other processes slow this down less.
        let seconds = cpu_of(std::process::id()).0 - cpu_before;
        println!(
            "quality {quality:>2}: {:>6.1} MB per CPU-second, {:.1} MB ({:.2} of the deflated size)",
            mb(total) / seconds,
            mb(out),
            out as f64 / deflated as f64
        );
    }
    Ok(())
}

fn work_dir() -> anyhow::Result<PathBuf> {
    let work = std::env::var_os("OTA_BENCH_WORK_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/bundle_sync"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&work)?;
    Ok(work)
}

// ---------------------------------------------------------------------------------------------
// Smoke test (`cargo test --benches`)

fn smoke() -> anyhow::Result<()> {
    let folder = tempfile::tempdir()?;
    let zip = folder.path().join("small.zip");
    let info = write_bundle(&zip, 0.01)?;
    if info.files != 1 + TEXT_FILES + BINARY_FILES {
        bail!("the generator wrote {} files", info.files);
    }
    let text_share = info.text_bytes as f64 / (info.text_bytes + info.binary_bytes) as f64;
    if !(0.2..0.6).contains(&text_share) {
        bail!("text is {:.0}% of the bundle's bytes", text_share * 100.0);
    }
    let store_dir = folder.path().join("store");
    std::fs::create_dir(&store_dir)?;
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&store_dir)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let synced = runtime.block_on(sync::sync_bundle(SyncRequest {
        source: &BundleSourceRef::File(zip),
        expected_sha256: &info.sha256,
        store: &store,
        prefix: &object_store::path::Path::ROOT,
        limits: &SyncLimits::default(),
        http: &reqwest::Client::new(),
    }))?;
    if synced.file_count != info.files as u64 || synced.uploaded_files != info.files as u64 {
        bail!(
            "synced {} files ({} uploaded) of {}",
            synced.file_count,
            synced.uploaded_files,
            info.files
        );
    }
    if synced.manifest.iter().any(|f| f.key.ends_with(".br")) {
        bail!("the first step stored a file Brotli-compressed");
    }
    let variants = runtime.block_on(sync::compress_variants(
        &store,
        &object_store::path::Path::ROOT,
        &synced.sha256,
    ))?;
    if variants.variants == 0 || !variants.manifest.iter().any(|f| f.key.ends_with(".br")) {
        bail!("no Brotli variant was made");
    }
    eprintln!(
        "bundle_sync smoke: a {}-byte bundle of {} files synced",
        info.zip_bytes, info.files
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driver: CPU and the machine

/// Waits, up to `limit`, until the machine is nearly idle. Returns the last busy share seen.
fn wait_for_idle(limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let (busy0, total0) = machine_cpu();
        thread::sleep(Duration::from_secs(2));
        let (busy1, total1) = machine_cpu();
        let busy = (busy1 - busy0) / (total1 - total0).max(1e-9);
        if busy < 0.10 || Instant::now() >= deadline {
            return busy;
        }
        eprintln!(
            "the machine is {:.0}% busy with other processes; waiting for it to calm down (up to {} s more)...",
            busy * 100.0,
            deadline.saturating_duration_since(Instant::now()).as_secs()
        );
        thread::sleep(Duration::from_secs(3));
    }
}

/// The share of the machine's CPU that processes this benchmark did not start took while
/// `phase` ran: the driver and the children it waited for, and the S3 server (`helper`), are
/// the benchmark's own.
fn measured<T>(helper: Option<u32>, phase: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let me = std::process::id();
    let own = || {
        let (mine, children) = cpu_of(me);
        mine + children + helper.map_or(0.0, |pid| cpu_of(pid).0)
    };
    let (own0, machine0) = (own(), machine_cpu());
    let result = phase()?;
    let (own1, machine1) = (own(), machine_cpu());
    let foreign = ((machine1.0 - machine0.0) - (own1 - own0)).max(0.0);
    Ok((result, foreign / (machine1.1 - machine0.1).max(1e-9)))
}

/// The filesystem and device a path is on (`df`), to show that everything shares one disk.
fn disk_of(path: &Path) -> String {
    Command::new("df")
        .args(["--output=source,fstype"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// Driver: the measured commands

/// Flushes dirty pages (from the previous round) so that no round pays for another's writes.
fn flush_disk() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// One baseline round: `sha256sum ZIP`, then `cp ZIP DEST`. Returns the two wall times.
fn baseline_round(zip: &Path, sha256: &str, destination: &Path) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let output = Command::new("sha256sum")
        .arg(zip)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run sha256sum")?;
    let hashed = started.elapsed().as_secs_f64();
    if !output.status.success() || !String::from_utf8_lossy(&output.stdout).starts_with(sha256) {
        bail!("sha256sum failed or disagrees: {output:?}");
    }
    let started = Instant::now();
    let status = Command::new("cp")
        .arg(zip)
        .arg(destination)
        .status()
        .context("cannot run cp")?;
    let copied = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("cp failed: {status}");
    }
    Ok((hashed, copied))
}

/// Where a sync child stores.
enum Target {
    Filesystem(PathBuf),
    S3 { prefix: String },
}

/// Wall times of one sync child: from its start to its `SYNCED` line (the bundle servable), and
/// to its exit (the Brotli variants done).
#[derive(Debug, Clone, Copy)]
struct SyncTimes {
    synced: f64,
    done: f64,
}

/// One sync in a child process. Returns its wall times and its report.
fn sync_round(
    zip: &Path,
    sha256: &str,
    target: &Target,
    tmp: &Path,
) -> anyhow::Result<(SyncTimes, SyncReport)> {
    let exe = std::env::current_exe().context("cannot find the bench binary")?;
    let mut command = Command::new(exe);
    command
        .env(ROLE_ENV, "sync")
        .env("OTA_BENCH_ZIP", zip)
        .env("OTA_BENCH_SHA256", sha256)
        // The sync's temporary folder on the same disk as everything else.
        .env("TMPDIR", tmp)
        .env_remove("OTA_BENCH_FS_STORE")
        .env_remove("OTA_BENCH_S3_PREFIX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match target {
        Target::Filesystem(folder) => command.env("OTA_BENCH_FS_STORE", folder),
        Target::S3 { prefix } => command.env("OTA_BENCH_S3_PREFIX", prefix),
    };
    let started = Instant::now();
    let mut child = command.spawn().context("cannot start the sync process")?;
    let stdout = child.stdout.take().context("no stdout of the sync process")?;
    let mut synced = None;
    let mut result = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the sync process's output")?;
        if line == "SYNCED" {
            synced.get_or_insert(started.elapsed().as_secs_f64());
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(json.to_owned());
        }
    }
    let status = child.wait().context("waiting for the sync process")?;
    let done = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the sync process failed: {status}");
    }
    let synced = synced.context("the sync process printed no SYNCED line")?;
    let line = result.context("the sync process printed no RESULT line")?;
    let report: SyncReport = serde_json::from_str(&line).context("the sync process's RESULT")?;
    Ok((SyncTimes { synced, done }, report))
}

/// A sync into empty storage must have stored every file of the bundle.
fn check_synced(report: &SyncReport, info: &BundleInfo) -> anyhow::Result<()> {
    let files = info.files as u64;
    if report.file_count != files || report.uploaded_files != files || report.zip_size != info.zip_bytes {
        bail!(
            "the sync stored {} files ({} uploaded) of a {}-byte zip; the bundle has {files} files in {} bytes",
            report.file_count,
            report.uploaded_files,
            report.zip_size,
            info.zip_bytes
        );
    }
    if report.brotli_files == 0 {
        bail!("no Brotli variant was made");
    }
    Ok(())
}

fn remove_dir(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// One measured round of any kind, with the share of the machine other processes took.
struct Round<T> {
    value: T,
    foreign: f64,
}

/// Runs `round` (measured) until other processes took at most [`FOREIGN_LIMIT`] of the machine
/// or `retries` reruns were spent; `cleanup` runs after each attempt (not measured).
fn steady<T>(
    name: &str,
    retries: u64,
    helper: Option<u32>,
    mut round: impl FnMut() -> anyhow::Result<T>,
    mut cleanup: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Round<T>> {
    let mut attempt = 0;
    loop {
        flush_disk()?;
        let measured_round = measured(helper, &mut round);
        cleanup()?;
        let (value, foreign) = measured_round?;
        if foreign <= FOREIGN_LIMIT || attempt >= retries {
            return Ok(Round { value, foreign });
        }
        attempt += 1;
        eprintln!(
            "  {name} was disturbed by other processes ({:.0}% of the machine): running it again",
            foreign * 100.0
        );
    }
}

/// The phases of a sync from its debug events: each event's message with the seconds since
/// the previous one (medians over the rounds, in the order of the first round).
fn phase_medians(reports: &[&SyncReport]) -> Vec<(String, f64)> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    first
        .events
        .iter()
        .map(|(message, _)| {
            let durations: Vec<f64> = reports
                .iter()
                .filter_map(|report| {
                    let at = report.events.iter().position(|(m, _)| m == message)?;
                    let previous = at.checked_sub(1).map_or(0.0, |p| report.events[p].1);
                    Some(report.events[at].1 - previous)
                })
                .collect();
            (message.clone(), median(&durations))
        })
        .collect()
}

fn run_driver() -> anyhow::Result<()> {
    let rounds = env_number("OTA_BENCH_ROUNDS", 5)?.max(1);
    let s3_rounds = env_number("OTA_BENCH_S3_ROUNDS", 3)?;
    let retries = env_number("OTA_BENCH_RETRIES", 2)?;
    let idle_wait = env_number("OTA_BENCH_IDLE_WAIT_SECONDS", 300)?;
    let s3_pid = match std::env::var("OTA_BENCH_S3_PID") {
        Ok(raw) => Some(raw.trim().parse::<u32>().context("OTA_BENCH_S3_PID")?),
        Err(_) => None,
    };
    let s3_ready = std::env::var("OTA_TEST_S3_ENDPOINT").is_ok();
    let work = work_dir()?;
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp)?;

    let (zip, info) = full_bundle(&work)?;
    let copy = work.join("copy.zip");
    // A fresh storage folder for every sync, all removed at the end rather than between rounds:
    // ext4 allocates new files slowly for a minute after many deletions (it skips recently
    // deleted inodes), and a real store is not emptied before each sync.
    let stores = work.join("stores");
    remove_dir(&stores)?;
    std::fs::create_dir_all(&stores)?;
    let attempts = std::cell::Cell::new(0u32);
    let next_attempt = || {
        attempts.set(attempts.get() + 1);
        attempts.get()
    };
    let next_store = || stores.join(next_attempt().to_string());

    let busy_before = wait_for_idle(Duration::from_secs(idle_wait));
    // Both sides read the zip from the page cache.
    sha256_file(&zip)?;

    let mut baseline = Vec::new();
    let mut filesystem = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: sha256sum + cp...");
        let base = steady(
            "the baseline",
            retries,
            None,
            || baseline_round(&zip, &info.sha256, &copy),
            || Ok(std::fs::remove_file(&copy)?),
        )?;
        eprintln!(
            "  {:.3} s (sha256sum {:.3} s, cp {:.3} s)",
            base.value.0 + base.value.1,
            base.value.0,
            base.value.1
        );
        baseline.push(base);
        eprintln!("round {round}/{rounds}: ota sync into filesystem storage...");
        let synced = steady(
            "the sync",
            retries,
            None,
            || sync_round(&zip, &info.sha256, &Target::Filesystem(next_store()), &tmp),
            || Ok(()),
        )?;
        check_synced(&synced.value.1, &info)?;
        eprintln!(
            "  Synced after {:.3} s, variants done after {:.3} s, peak RSS {:.1} MiB, {:.2} CPU-s",
            synced.value.0.synced,
            synced.value.0.done,
            mib(synced.value.1.hwm_kib),
            synced.value.1.cpu_seconds
        );
        filesystem.push(synced);
    }

    let mut s3 = Vec::new();
    if s3_ready {
        for round in 1..=s3_rounds {
            eprintln!("round {round}/{s3_rounds}: ota sync into S3...");
            // A fresh prefix for every attempt.
            let synced = steady(
                "the S3 sync",
                retries,
                s3_pid,
                || {
                    let prefix = format!("bench/{}-{}", std::process::id(), next_attempt());
                    sync_round(&zip, &info.sha256, &Target::S3 { prefix }, &tmp)
                },
                || Ok(()),
            )?;
            check_synced(&synced.value.1, &info)?;
            eprintln!(
                "  Synced after {:.3} s, variants done after {:.3} s, peak RSS {:.1} MiB",
                synced.value.0.synced,
                synced.value.0.done,
                mib(synced.value.1.hwm_kib)
            );
            s3.push(synced);
        }
    }

    remove_dir(&stores)?;

    // The report.
    let base_total: Vec<f64> = baseline.iter().map(|r| r.value.0 + r.value.1).collect();
    let base_hash: Vec<f64> = baseline.iter().map(|r| r.value.0).collect();
    let base_copy: Vec<f64> = baseline.iter().map(|r| r.value.1).collect();
    let fs_wall: Vec<f64> = filesystem.iter().map(|r| r.value.0.synced).collect();
    let fs_done: Vec<f64> = filesystem.iter().map(|r| r.value.0.done).collect();
    let fs_reports: Vec<&SyncReport> = filesystem.iter().map(|r| &r.value.1).collect();
    let fs_sync: Vec<f64> = fs_reports.iter().map(|r| r.sync_seconds).collect();
    let fs_cpu: Vec<f64> = fs_reports.iter().map(|r| r.cpu_seconds).collect();
    let fs_hwm = fs_reports.iter().map(|r| r.hwm_kib).max().unwrap_or(0);
    let fs_synced_hwm = fs_reports.iter().map(|r| r.synced_hwm_kib).max().unwrap_or(0);
    let fs_hwm_median = median(&fs_reports.iter().map(|r| r.hwm_kib as f64).collect::<Vec<_>>());
    let ratio = median(&fs_wall) / median(&base_total).max(1e-9);
    let done_ratio = median(&fs_done) / median(&base_total).max(1e-9);
    let foreign: Vec<f64> = baseline
        .iter()
        .map(|r| r.foreign)
        .chain(filesystem.iter().map(|r| r.foreign))
        .chain(s3.iter().map(|r| r.foreign))
        .collect();
    let sample = fs_reports.first().copied().cloned().unwrap_or_default();

    println!("bundle sync benchmark (benches/bundle_sync.rs)");
    println!("machine: {}", common::machine());
    println!(
        "disk: zip, copies, storage and temporary files all on {}",
        disk_of(&work)
    );
    println!(
        "bundle: {:.1} MB zip (sha256 {}), {} files: {} text files ({:.1} MB), {} images and fonts ({:.1} MB); {:.1} MB uncompressed",
        mb(info.zip_bytes),
        &info.sha256[..12],
        info.files,
        info.text_files,
        mb(info.text_bytes),
        info.binary_files,
        mb(info.binary_bytes),
        mb(sample.uncompressed_size)
    );
    println!(
        "  synced: {} files, {} uploaded ({} Brotli-compressed in the first step); {} served Brotli-compressed once the variants are done",
        sample.file_count, sample.uploaded_files, sample.synced_brotli_files, sample.brotli_files
    );
    println!(
        "baseline, sha256sum + cp (median of {}): {:.3} s  (sha256sum {:.3} s, cp {:.3} s)",
        baseline.len(),
        median(&base_total),
        median(&base_hash),
        median(&base_copy)
    );
    println!(
        "ota sync into filesystem storage (median of {}): Synced after {:.3} s (sync_bundle itself {:.3} s; peak RSS by then {:.1} MiB); Brotli variants done after {:.3} s (ratio to the baseline {:.2}); {:.2} CPU-s in all, {:.2} CPUs busy on average; peak RSS {:.1} MiB (median {:.1})",
        filesystem.len(),
        median(&fs_wall),
        median(&fs_sync),
        mib(fs_synced_hwm),
        median(&fs_done),
        done_ratio,
        median(&fs_cpu),
        median(&fs_cpu) / median(&fs_done).max(1e-9),
        mib(fs_hwm),
        fs_hwm_median / 1024.0
    );
    println!("  phases (median seconds since the previous event):");
    for (message, seconds) in phase_medians(&fs_reports) {
        println!("    {seconds:>7.3}  {message}");
    }
    if s3.is_empty() {
        println!(
            "ota sync into S3: not run (set OTA_TEST_S3_* as tests/s3/s3.sh start prints them; tests/bench/bundle_sync.sh does)"
        );
    } else {
        let s3_wall: Vec<f64> = s3.iter().map(|r| r.value.0.synced).collect();
        let s3_done: Vec<f64> = s3.iter().map(|r| r.value.0.done).collect();
        let s3_reports: Vec<&SyncReport> = s3.iter().map(|r| &r.value.1).collect();
        let s3_hwm = s3_reports.iter().map(|r| r.hwm_kib).max().unwrap_or(0);
        println!(
            "ota sync into S3 (rclone serve s3 on 127.0.0.1, median of {}): Synced after {:.3} s, ratio to the baseline {:.2}; variants done after {:.3} s, ratio {:.2}; peak RSS {:.1} MiB",
            s3.len(),
            median(&s3_wall),
            median(&s3_wall) / median(&base_total).max(1e-9),
            median(&s3_done),
            median(&s3_done) / median(&base_total).max(1e-9),
            mib(s3_hwm)
        );
        println!("  phases (median seconds since the previous event):");
        for (message, seconds) in phase_medians(&s3_reports) {
            println!("    {seconds:>7.3}  {message}");
        }
    }
    let worst = foreign.iter().copied().fold(0.0, f64::max);
    println!(
        "other processes: {:.0}% of the machine's CPU before the run; during the measured rounds {:.1}% on average, {:.1}% at most{}",
        busy_before * 100.0,
        foreign.iter().sum::<f64>() / foreign.len().max(1) as f64 * 100.0,
        worst * 100.0,
        if worst > FOREIGN_LIMIT {
            " (DISTURBED: the figures are not reliable)"
        } else {
            ""
        }
    );
    println!("targets (filesystem run):");
    println!(
        "  wall time to Synced, ota / (sha256sum + cp) = {ratio:.2} (target <= {TARGET_WALL_RATIO})  {}",
        verdict(ratio <= TARGET_WALL_RATIO)
    );
    println!(
        "  (wall time until the Brotli variants are done, ota / (sha256sum + cp) = {done_ratio:.2}; no target)"
    );
    println!(
        "  peak RSS = {:.1} MiB, the highest of the rounds (target <= {TARGET_RSS_MIB} MiB)  {}",
        mib(fs_hwm),
        verdict(mib(fs_hwm) <= TARGET_RSS_MIB)
    );
    Ok(())
}
