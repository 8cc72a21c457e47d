//! HTTP hygiene under a mutation fuzz: the real `ota standalone` binary serving a copy of
//! examples/standalone (a real SQLite device store) on 127.0.0.1, and 6,000 requests built from
//! the plugin fixtures (tests/fixtures/plugin) and mutated — type swaps, missing and huge fields,
//! random bytes, deep nesting, truncated JSON, wrong methods, paths and content types, bodies
//! over the server's limits, bodies on GET and DELETE, chunked bodies — sent by a raw HTTP/1.1
//! client over a few persistent keep-alive connections per worker; and 600 requests with wrong
//! methods, paths and bodies to its internal listener.
//!
//! Asserts: no 5xx, no panic in the server (its stderr, and it is still running), every request
//! answered, and no connection closed by the server unless the response before said
//! `Connection: close` (and a connection the server said it closes is really closed). The RNG is
//! seeded, so a failure replays.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ota_operator::{
    api::constants::{MONTHLY_ACTIVE_DEVICES_PATH, ROLLOUT_FIGURES_PATH},
    protocol::{MAX_INFO_BODY, MAX_STATS_BODY},
};
use serde_json::{Map, Value, json};

mod support;

const SEED: u64 = 0x0007_A0F2_2012;
const WORKERS: u64 = 4;
const REQUESTS_PER_WORKER: usize = 1_500;
const CONNECTIONS_PER_WORKER: usize = 2;
const INTERNAL_REQUESTS: usize = 600;
/// How long a read may wait: far above any answer's time, so a timeout is a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

struct Standalone {
    child: Child,
    port: u16,
    internal_port: u16,
    stderr: PathBuf,
    _served: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        // Stop exactly the process this test started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ota standalone` on a copy of examples/standalone, its stderr in a file (read for panics).
fn start_standalone() -> Standalone {
    let served = tempfile::tempdir().unwrap();
    support::copy_example_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/standalone"),
        served.path(),
    );
    let logs = tempfile::tempdir().unwrap();
    let stderr = logs.path().join("stderr.log");
    let (port, internal_port) = (support::free_port(), support::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["standalone", "--poll-ms", "100", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(served.path())
        .env("OTA_INTERNAL_LISTEN", format!("127.0.0.1:{internal_port}"))
        .env("OTA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("ota starts");
    let mut server = Standalone {
        child,
        port,
        internal_port,
        stderr,
        _served: served,
        _logs: logs,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = FuzzRequest::plain("GET", "/readyz".to_owned(), "readyz".to_owned());
    let alive = FuzzRequest::plain("GET", "/healthz".to_owned(), "healthz".to_owned());
    let answers_200 = |port: u16, request: &FuzzRequest| {
        Connection::open(port)
            .and_then(|mut connection| connection.exchange(request))
            .is_ok_and(|response| response.status == 200)
    };
    loop {
        if answers_200(port, &ready) && answers_200(internal_port, &alive) {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
            panic!("ota standalone exited with {status}:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "ota standalone was not ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request as it goes on the wire, and what it is (for the failure messages).
#[derive(Clone)]
struct FuzzRequest {
    method: &'static str,
    target: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    chunked: bool,
    what: String,
}

impl FuzzRequest {
    fn plain(method: &'static str, target: String, what: String) -> Self {
        Self {
            method,
            target,
            content_type: None,
            body: None,
            chunked: false,
            what,
        }
    }

    fn wire(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ota-http-fuzz\r\n",
            self.method, self.target
        );
        if let Some(content_type) = self.content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        let Some(body) = &self.body else {
            head.push_str("\r\n");
            return head.into_bytes();
        };
        if !self.chunked {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut wire = head.into_bytes();
            wire.extend_from_slice(body);
            return wire;
        }
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut wire = head.into_bytes();
        for chunk in body.chunks(4096) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }
}

struct Response {
    status: u16,
    /// The response said `Connection: close` (or ended its body by closing).
    says_close: bool,
}

/// A persistent HTTP/1.1 connection, read and written by hand so that a close is seen.
struct Connection {
    reader: BufReader<TcpStream>,
    /// What was answered last on it (the request whose answer a silent close follows).
    previous: Option<String>,
}

impl Connection {
    fn open(port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Self {
            reader: BufReader::new(stream),
            previous: None,
        })
    }

    /// Sends `request` and reads its answer. A write that fails is not the end: a server that
    /// answers early (413) may stop reading, and its answer is still there to read.
    fn exchange(&mut self, request: &FuzzRequest) -> io::Result<Response> {
        let written = self.reader.get_mut().write_all(&request.wire());
        let read = read_response(&mut self.reader, request.method == "HEAD");
        match (read, written) {
            (Ok(response), _) => Ok(response),
            (Err(error), Ok(())) | (Err(_), Err(error)) => Err(error),
        }
    }

    /// After a `Connection: close`: the server must really close (EOF or reset, no more bytes).
    fn closed_by_server(&mut self) -> Result<(), String> {
        let mut byte = [0_u8; 1];
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|error| error.to_string())?;
        match self.reader.read(&mut byte) {
            Ok(0) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            Ok(_) => Err("more bytes after a response that said Connection: close".to_owned()),
            Err(error) => Err(format!("still open 5 s after Connection: close ({error})")),
        }
    }
}

fn read_response(reader: &mut BufReader<TcpStream>, head_request: bool) -> io::Result<Response> {
    loop {
        let mut status_line = String::new();
        if reader.read_line(&mut status_line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before answering",
            ));
        }
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let (mut length, mut chunked, mut says_close) = (None, false, false);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in the head"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => says_close |= value.split(',').any(|token| token.trim() == "close"),
                _ => {}
            }
        }
        if (100..200).contains(&status) {
            continue; // an interim answer; the real one follows
        }
        if head_request || status == 204 || status == 304 {
            return Ok(Response { status, says_close });
        }
        if chunked {
            read_chunked(reader)?;
        } else if let Some(length) = length {
            io::copy(&mut reader.by_ref().take(length as u64), &mut io::sink())?;
        } else {
            // Neither length nor chunks: the body ends when the server closes.
            io::copy(reader, &mut io::sink())?;
            says_close = true;
        }
        return Ok(Response { status, says_close });
    }
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<()> {
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        io::copy(&mut reader.by_ref().take(size as u64 + 2), &mut io::sink())?;
    }
}

/// A plugin request from tests/fixtures/plugin.
#[derive(Clone)]
struct Fixture {
    name: String,
    method: &'static str,
    path: String,
    query: String,
    body: Option<Value>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plugin");
    let mut fixtures: Vec<Fixture> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .map(|path| {
            let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            Fixture {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                method: method_named(fixture["method"].as_str().unwrap()),
                path: fixture["path"].as_str().unwrap().to_owned(),
                query: fixture["query"].as_str().unwrap_or("").to_owned(),
                body: Some(fixture["body"].clone()).filter(|body| !body.is_null()),
            }
        })
        .collect();
    fixtures.sort_by(|a, b| a.name.cmp(&b.name)); // read_dir's order is not the same everywhere
    assert!(fixtures.len() > 50, "the plugin fixtures are missing");
    fixtures
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

fn method_named(name: &str) -> &'static str {
    METHODS
        .into_iter()
        .find(|method| *method == name)
        .unwrap_or_else(|| panic!("unknown method {name}"))
}

const CONTENT_TYPES: [&str; 6] = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "application/json; charset=utf-16",
    "garbage/;;;",
];

const STRANGE_PATHS: [&str; 8] = [
    "/nope",
    "/updates/extra",
    "/stats/",
    "/channel_self/x",
    "/files/com.example.shop/../../etc/passwd",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// A JSON value of a random kind.
fn random_value(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(..8) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e300),
        4 => json!(""),
        5 => json!([1, "two", null]),
        6 => json!({"nested": {"deeper": [true]}}),
        _ => json!((0..rng.usize(1..40)).map(|_| rng.char(..)).collect::<String>()),
    }
}

/// An object of the body to mutate: the body itself, or one event of a batch.
fn some_object<'a>(body: &'a mut Value, rng: &mut fastrand::Rng) -> Option<&'a mut Map<String, Value>> {
    match body {
        Value::Object(object) => Some(object),
        Value::Array(items) if !items.is_empty() => {
            let at = rng.usize(..items.len());
            items[at].as_object_mut()
        }
        _ => None,
    }
}

fn some_key(object: &Map<String, Value>, rng: &mut fastrand::Rng) -> Option<String> {
    (!object.is_empty()).then(|| object.keys().nth(rng.usize(..object.len())).unwrap().clone())
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A body over `limit` bytes: valid JSON, so only its size is wrong.
fn oversized(limit: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let pad = "x".repeat(limit + rng.usize(1..8192));
    format!("{{\"app_id\":\"com.example.shop\",\"pad\":\"{pad}\"}}").into_bytes()
}

fn limit_of(path: &str) -> usize {
    if path == "/stats" {
        MAX_STATS_BODY
    } else {
        MAX_INFO_BODY
    }
}

/// One fuzzed request: a fixture, mutated.
fn mutated(fixtures: &[Fixture], rng: &mut fastrand::Rng) -> FuzzRequest {
    let fixture = &fixtures[rng.usize(..fixtures.len())];
    let mut body = fixture.body.clone();
    let mut method = fixture.method;
    let mut path = fixture.path.clone();
    let mut content_type = Some("application/json");
    let mut raw: Option<Vec<u8>> = None;
    let mutation = rng.u8(..16);
    let what = match mutation {
        0..=2 => "as sent".to_owned(),
        3 => {
            let key = body.as_mut().and_then(|body| {
                let object = some_object(body, rng)?;
                let key = some_key(object, rng)?;
                object.insert(key.clone(), random_value(rng));
                Some(key)
            });
            format!("type swap of {key:?}")
        }
        4 => {
            let key = body.as_mut().and_then(|body| {
                let object = some_object(body, rng)?;
                let key = some_key(object, rng)?;
                object.remove(&key);
                Some(key)
            });
            format!("without {key:?}")
        }
        5 => {
            let size = rng.usize(1_000..100_000);
            let huge = "é".repeat(size / 2);
            let key = body.as_mut().and_then(|body| {
                let object = some_object(body, rng)?;
                let key = some_key(object, rng).unwrap_or_else(|| "extra".to_owned());
                object.insert(key.clone(), json!(huge));
                Some(key)
            });
            format!("{key:?} of {size} bytes")
        }
        6 => {
            let bytes: Vec<u8> = (0..rng.usize(0..4096)).map(|_| rng.u8(..)).collect();
            let what = format!("{} random bytes", bytes.len());
            raw = Some(bytes);
            what
        }
        7 => {
            let depth = rng.usize(2..20_000);
            if rng.bool() {
                raw = Some(nested(depth).into_bytes());
                format!("arrays nested {depth} deep")
            } else {
                let key = body.as_mut().and_then(|body| {
                    let object = some_object(body, rng)?;
                    let key = some_key(object, rng)?;
                    object.insert(
                        key.clone(),
                        serde_json::from_str(&nested(depth.min(100))).unwrap(),
                    );
                    Some(key)
                });
                format!("{key:?} nested {} deep", depth.min(100))
            }
        }
        8 => {
            let whole = body.as_ref().map(|body| body.to_string()).unwrap_or_default();
            let cut = rng.usize(..=whole.len());
            raw = Some(whole.as_bytes()[..cut].to_vec());
            format!("cut at {cut} of {}", whole.len())
        }
        9 => {
            method = METHODS[rng.usize(..METHODS.len())];
            format!("method {method}")
        }
        10 => {
            content_type = if rng.u8(..4) == 0 {
                None
            } else {
                Some(CONTENT_TYPES[rng.usize(..CONTENT_TYPES.len())])
            };
            format!("content type {content_type:?}")
        }
        11 => {
            raw = Some(oversized(limit_of(&path), rng));
            format!("over the {} limit", path)
        }
        12 => {
            // A body on a GET or DELETE, up to past /updates's limit (the 70 KB).
            method = if rng.bool() { "GET" } else { "DELETE" };
            let size = if rng.bool() {
                rng.usize(0..2_000)
            } else {
                rng.usize(60_000..80_000)
            };
            let pad = "y".repeat(size);
            raw = Some(format!("{{\"pad\":\"{pad}\"}}").into_bytes());
            format!("{method} with a {size}-byte body")
        }
        13 => {
            path = STRANGE_PATHS[rng.usize(..STRANGE_PATHS.len())].to_owned();
            method = METHODS[rng.usize(..METHODS.len())];
            format!("{method} {path}")
        }
        14 => {
            // Empty or whitespace bodies where parameters are expected.
            raw = Some(" \n\t".as_bytes()[..rng.usize(0..=3)].to_vec());
            "blank body".to_owned()
        }
        _ => {
            // Two fields swapped and one removed at once.
            if let Some(object) = body.as_mut().and_then(|body| some_object(body, rng)) {
                for _ in 0..2 {
                    if let Some(key) = some_key(object, rng) {
                        object.insert(key, random_value(rng));
                    }
                }
                if let Some(key) = some_key(object, rng) {
                    object.remove(&key);
                }
            }
            "several fields mutated".to_owned()
        }
    };
    let body = raw.or_else(|| body.map(|body| serde_json::to_vec(&body).unwrap()));
    let target = if fixture.query.is_empty() {
        path
    } else {
        format!("{path}?{}", fixture.query)
    };
    let chunked = body.is_some() && rng.u8(..8) == 0;
    FuzzRequest {
        method,
        target,
        content_type: content_type.filter(|_| body.is_some()),
        body,
        chunked,
        what: format!(
            "{} ({what}{})",
            fixture.name,
            if chunked { ", chunked" } else { "" }
        ),
    }
}

const INTERNAL_PATHS: [&str; 6] = [
    "?app_id=com.example.shop&channel=production&version=1.4.3&since_ms=0",
    "?app_id=",
    "?app_id=com.example.shop",
    "/healthz",
    "/metrics",
    "/nope",
];

/// A request to the internal listener: any method, right and wrong paths, with or without a
/// body (small, or past 64 KiB).
fn internal_request(rng: &mut fastrand::Rng) -> FuzzRequest {
    let method = METHODS[rng.usize(..METHODS.len())];
    let suffix = INTERNAL_PATHS[rng.usize(..INTERNAL_PATHS.len())];
    let target = match (suffix.starts_with('?'), rng.bool()) {
        (true, true) => format!("{ROLLOUT_FIGURES_PATH}{suffix}"),
        (true, false) => format!("{MONTHLY_ACTIVE_DEVICES_PATH}{suffix}"),
        (false, _) => suffix.to_owned(),
    };
    let body = match rng.u8(..3) {
        0 => None,
        1 => Some((0..rng.usize(0..2_000)).map(|_| rng.u8(..)).collect::<Vec<u8>>()),
        _ => Some(vec![b'z'; rng.usize(60_000..80_000)]),
    };
    let what = format!(
        "internal {method} {target} with {} body bytes",
        body.as_ref().map_or(0, Vec::len)
    );
    FuzzRequest {
        method,
        target,
        content_type: body.as_ref().map(|_| "application/json"),
        body,
        chunked: false,
        what,
    }
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    requests: usize,
    statuses: BTreeMap<u16, usize>,
    closes_said: usize,
    failures: Vec<String>,
}

/// Sends `count` requests made by `generate` over `CONNECTIONS_PER_WORKER` keep-alive
/// connections.
fn fuzz(
    port: u16,
    seed: u64,
    count: usize,
    mut generate: impl FnMut(&mut fastrand::Rng) -> FuzzRequest,
) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut pool: Vec<Option<Connection>> = (0..CONNECTIONS_PER_WORKER).map(|_| None).collect();
    let mut tally = Tally::default();
    for n in 0..count {
        let request = generate(&mut rng);
        let slot = &mut pool[rng.usize(..CONNECTIONS_PER_WORKER)];
        let connection = match slot {
            Some(connection) => connection,
            None => slot.insert(Connection::open(port).expect("connect to the server")),
        };
        tally.requests += 1;
        match connection.exchange(&request) {
            Ok(response) => {
                *tally.statuses.entry(response.status).or_default() += 1;
                if response.status >= 500 {
                    tally
                        .failures
                        .push(format!("#{n} {}: answered {}", request.what, response.status));
                }
                if response.says_close {
                    tally.closes_said += 1;
                    if let Err(error) = connection.closed_by_server() {
                        tally.failures.push(format!("#{n} {}: {error}", request.what));
                    }
                    *slot = None;
                } else {
                    connection.previous = Some(request.what);
                }
            }
            Err(error) => {
                let failure = match &connection.previous {
                    Some(previous) => format!(
                        "#{n} {}: {error}, on a connection the server dropped after answering \
                         {previous} without Connection: close",
                        request.what
                    ),
                    None => format!("#{n} {}: {error}, on a new connection", request.what),
                };
                tally.failures.push(failure);
                *slot = None;
            }
        }
    }
    tally
}

#[test]
fn fuzzed_plugin_requests_get_no_5xx_and_no_silent_close() {
    let server = start_standalone();
    let fixtures = fixtures();
    let started = Instant::now();
    let (tallies, internal): (Vec<Tally>, Tally) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let fixtures = &fixtures;
                scope.spawn(move || {
                    fuzz(server.port, SEED + worker, REQUESTS_PER_WORKER, |rng| {
                        mutated(fixtures, rng)
                    })
                })
            })
            .collect();
        let internal = scope.spawn(|| {
            fuzz(
                server.internal_port,
                SEED + WORKERS,
                INTERNAL_REQUESTS,
                internal_request,
            )
        });
        (
            workers.into_iter().map(|worker| worker.join().unwrap()).collect(),
            internal.join().unwrap(),
        )
    });
    let mut total = Tally::default();
    for tally in tallies {
        total.requests += tally.requests;
        total.closes_said += tally.closes_said;
        total.failures.extend(tally.failures);
        for (status, count) in tally.statuses {
            *total.statuses.entry(status).or_default() += count;
        }
    }
    println!(
        "{} requests in {:.1} s: statuses {:?}, {} answered with Connection: close, {} failed",
        total.requests,
        started.elapsed().as_secs_f64(),
        total.statuses,
        total.closes_said,
        total.failures.len()
    );
    println!(
        "internal listener: {} requests, statuses {:?}, {} answered with Connection: close, {} failed",
        internal.requests,
        internal.statuses,
        internal.closes_said,
        internal.failures.len()
    );
    assert!(total.requests >= 5_000);
    total.requests += internal.requests;
    total.failures.extend(internal.failures);
    let mut server = server;
    let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited:\n{log}"
    );
    assert!(
        total.failures.is_empty(),
        "{} of {} requests failed; the first ones:\n{}",
        total.failures.len(),
        total.requests,
        total.failures[..total.failures.len().min(20)].join("\n")
    );
}
