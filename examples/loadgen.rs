//! Load generator for the demo server (and the baseline server of the bench), over real HTTP.
//!
//! It opens subscribers (`GET /events/{topic}`, one TCP connection each, HTTP/1.1) spread over
//! the instances, publishes events at a fixed rate round-robin to the instances
//! (`POST /publish/{topic}`), and checks what every subscriber received: delivered, missing,
//! duplicate and out-of-order events, and the publish-to-receive latency. Each event's data is
//! `seq=N t=MICROS`: its number in the run and the time (µs since the Unix epoch) the publish
//! request was sent; everything runs on one machine, so sender and receiver share the clock.
//!
//! Given the servers' process ids (`--pids`, or when it starts the instances itself with
//! `--spawn-demo`/`--spawn-baseline`), it also reports the servers' CPU time per delivered
//! event (`utime + stime` from `/proc/PID/stat` over the run, divided by the deliveries) and
//! their memory per connection (`VmRSS` from `/proc/PID/status`).
//!
//! It prints one JSON line per measured run on stdout (and, comparing two servers, a last line
//! with the ratios) and a summary on stderr.
//!
//! ```text
//! cargo build --release --example demo --example baseline --example loadgen
//! target/release/examples/loadgen --scenario fanout --spawn-demo target/release/examples/demo \
//!     --instances 2 --backend pubsub --redis redis://127.0.0.1:6390 \
//!     --subscribers 200 --events 2000 --rate 1000
//! ```
//!
//! Scenarios:
//! - `fanout`: every subscriber follows one hot topic.
//! - `topics`: `--topics T` topics (default: one per subscriber); subscriber `i` follows topic
//!   `i % T`, event `j` goes to topic `j % T`.
//! - `resume`: like `fanout`, but a share of the subscribers (`--resume-share`) drops its
//!   connection a third into the run and reconnects to the next instance with `Last-Event-ID`;
//!   loss and duplicates across the reconnection are counted.
//! - `idle`: open the subscribers, publish nothing, and report the servers' memory per
//!   connection: (RSS with the connections open − RSS before) / connections.
//!
//! Only loopback targets are accepted. Every run is bounded (`--max-secs`) and stops by itself.
//! Many connections need a raised file descriptor limit (`ulimit -n`); `benches/run-load.sh`
//! sets it.

// The result object is one large `json!` literal.
#![recursion_limit = "256"]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch, Semaphore},
    time::Instant,
};

const USAGE: &str = "usage: loadgen [--scenario fanout|topics|resume|idle] \
[--target URL[,URL...]] [--spawn-demo PATH] [--spawn-baseline PATH] [--instances M] \
[--backend memory|pubsub] [--redis URL] [--server-arg ARG]... [--server-env NAME=VALUE]... [--pids PID[,PID...]] \
[--redis-pid PID] [--subscribers N] [--topics T] [--events K] [--rate R] [--payload BYTES] \
[--publishers P] [--drain-ms MS] [--resume-share F] [--pause-ms MS] [--settle-ms MS] \
[--warmup-ms MS] \
[--connect-concurrency C] [--threads N] [--label TEXT] [--max-secs S] [--verbose]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Fanout,
    Topics,
    Resume,
    Idle,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Topics => "topics",
            Scenario::Resume => "resume",
            Scenario::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    scenario: Scenario,
    targets: Vec<SocketAddr>,
    spawn: Vec<(String, String)>,
    instances: usize,
    backend: Option<String>,
    redis: Option<String>,
    server_args: Vec<String>,
    server_env: Vec<(String, String)>,
    pids: Vec<u32>,
    redis_pid: Option<u32>,
    subscribers: usize,
    topics: Option<usize>,
    events: usize,
    rate: f64,
    payload: usize,
    publishers: usize,
    drain: Duration,
    resume_share: f64,
    pause: Duration,
    settle: Duration,
    warmup: Duration,
    connect_concurrency: usize,
    threads: usize,
    label: Option<String>,
    max_secs: u64,
    verbose: bool,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        scenario: Scenario::Fanout,
        targets: Vec::new(),
        spawn: Vec::new(),
        instances: 2,
        backend: None,
        redis: None,
        server_args: Vec::new(),
        server_env: Vec::new(),
        pids: Vec::new(),
        redis_pid: None,
        subscribers: 200,
        topics: None,
        events: 2000,
        rate: 1000.0,
        payload: 0,
        publishers: 4,
        drain: Duration::from_millis(3000),
        resume_share: 0.5,
        pause: Duration::from_millis(100),
        settle: Duration::from_millis(1500),
        warmup: Duration::ZERO,
        connect_concurrency: 128,
        threads: 1,
        label: None,
        max_secs: 300,
        verbose: false,
    };
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--help" | "-h" => return Err(USAGE.to_owned()),
            "--scenario" => {
                o.scenario = match value()?.as_str() {
                    "fanout" => Scenario::Fanout,
                    "topics" => Scenario::Topics,
                    "resume" => Scenario::Resume,
                    "idle" => Scenario::Idle,
                    other => return Err(format!("unknown scenario {other:?}")),
                }
            }
            "--target" => {
                for t in value()?.split(',') {
                    o.targets.push(parse_target(t)?);
                }
            }
            "--spawn-demo" => o.spawn.push(("demo".to_owned(), value()?)),
            "--spawn-baseline" => o.spawn.push(("baseline".to_owned(), value()?)),
            "--instances" => o.instances = num(&name, &value()?)?,
            "--backend" => o.backend = Some(value()?),
            "--redis" => o.redis = Some(value()?),
            "--server-arg" => o.server_args.push(value()?),
            "--server-env" => {
                let v = value()?;
                let (k, v) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--server-env {v:?}: expected NAME=VALUE"))?;
                o.server_env.push((k.to_owned(), v.to_owned()));
            }
            "--pids" => {
                for p in value()?.split(',') {
                    o.pids.push(num(&name, p)?);
                }
            }
            "--redis-pid" => o.redis_pid = Some(num(&name, &value()?)?),
            "--subscribers" => o.subscribers = num(&name, &value()?)?,
            "--topics" => o.topics = Some(num(&name, &value()?)?),
            "--events" => o.events = num(&name, &value()?)?,
            "--rate" => o.rate = num(&name, &value()?)?,
            "--payload" => o.payload = num(&name, &value()?)?,
            "--publishers" => o.publishers = num::<usize>(&name, &value()?)?.max(1),
            "--drain-ms" => o.drain = Duration::from_millis(num(&name, &value()?)?),
            "--resume-share" => o.resume_share = num(&name, &value()?)?,
            "--pause-ms" => o.pause = Duration::from_millis(num(&name, &value()?)?),
            "--settle-ms" => o.settle = Duration::from_millis(num(&name, &value()?)?),
            "--warmup-ms" => o.warmup = Duration::from_millis(num(&name, &value()?)?),
            "--connect-concurrency" => {
                o.connect_concurrency = num::<usize>(&name, &value()?)?.max(1)
            }
            "--threads" => o.threads = num::<usize>(&name, &value()?)?.max(1),
            "--label" => o.label = Some(value()?),
            "--max-secs" => o.max_secs = num(&name, &value()?)?,
            "--verbose" => o.verbose = true,
            _ => return Err(format!("unknown option {arg:?}; {USAGE}")),
        }
    }
    if o.targets.is_empty() && o.spawn.is_empty() {
        return Err(format!(
            "give --target URL or --spawn-demo/--spawn-baseline PATH; {USAGE}"
        ));
    }
    if !o.targets.is_empty() && !o.spawn.is_empty() {
        return Err("--target and --spawn-* exclude each other".to_owned());
    }
    if o.rate.is_nan() || o.rate <= 0.0 {
        return Err("--rate must be positive".to_owned());
    }
    if o.subscribers == 0 && o.scenario == Scenario::Idle {
        return Err("--scenario idle needs --subscribers N > 0".to_owned());
    }
    Ok(o)
}

fn num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{name} {value:?}: not a valid number"))
}

/// `http://127.0.0.1:3000` (or `127.0.0.1:3000`): loopback addresses only.
fn parse_target(t: &str) -> Result<SocketAddr, String> {
    let hostport = t
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| format!("target {t:?}: expected http://IP:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("target {t:?}: only loopback addresses are allowed"));
    }
    Ok(addr)
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("loadgen: {message}");
            return ExitCode::from(2);
        }
    };
    let mut builder = if options.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(options.threads);
        b
    };
    let runtime = builder.enable_all().build().expect("a tokio runtime");
    let limit = Duration::from_secs(options.max_secs);
    match runtime.block_on(async { tokio::time::timeout(limit, run_all(options)).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(message)) => {
            eprintln!("loadgen: {message}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("loadgen: gave up after --max-secs {}", limit.as_secs());
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenario against each server (the given targets, or each spawned kind in turn).
async fn run_all(options: Options) -> Result<(), String> {
    let mut results = Vec::new();
    if options.spawn.is_empty() {
        let label = options.label.clone().unwrap_or_else(|| "target".to_owned());
        let pids = options.pids.clone();
        let targets = options.targets.clone();
        results.push(run_one(&options, &label, &targets, &pids).await?);
    } else {
        for (kind, path) in &options.spawn {
            let servers = Servers::spawn(&options, kind, path)?;
            let label = match &options.label {
                Some(l) => format!("{kind}:{l}"),
                None => kind.clone(),
            };
            let result = run_one(&options, &label, &servers.addrs, &servers.pids()).await;
            drop(servers);
            results.push(result?);
        }
    }
    for r in &results {
        println!("{r}");
    }
    if results.len() == 2 {
        let ratio = |key: &str, path: &[&str]| -> Value {
            let get = |v: &Value| {
                let mut v = v.get(key)?;
                for p in path {
                    v = v.get(p)?;
                }
                v.as_f64()
            };
            match (get(&results[0]), get(&results[1])) {
                (Some(a), Some(b)) if a > 0.0 => json!(b / a),
                _ => Value::Null,
            }
        };
        let comparison = json!({
            "scenario": "compare",
            "of": [results[0]["server"], results[1]["server"]],
            "note": "second / first",
            "cpu_us_per_delivery": ratio("cpu_us_per_delivery", &[]),
            "latency_p99_us": ratio("latency_us", &["p99"]),
            "rss_per_conn_bytes": ratio("rss_per_conn_bytes", &[]),
        });
        eprintln!(
            "ratio {} / {}: CPU per delivery {:.2}x, p99 {:.2}x, RSS per connection {:.2}x",
            results[1]["server"],
            results[0]["server"],
            comparison["cpu_us_per_delivery"]
                .as_f64()
                .unwrap_or(f64::NAN),
            comparison["latency_p99_us"].as_f64().unwrap_or(f64::NAN),
            comparison["rss_per_conn_bytes"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        println!("{comparison}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Spawned servers

struct Servers {
    children: Vec<Child>,
    addrs: Vec<SocketAddr>,
}

impl Servers {
    fn spawn(options: &Options, kind: &str, path: &str) -> Result<Self, String> {
        let mut servers = Servers {
            children: Vec::new(),
            addrs: Vec::new(),
        };
        for i in 0..options.instances.max(1) {
            let mut command = Command::new(path);
            command.args(["--listen", "127.0.0.1:0"]);
            if let Some(backend) = &options.backend {
                command.args(["--backend", backend]);
            }
            if let Some(redis) = &options.redis {
                command.args(["--redis", redis]);
            }
            command
                .args(&options.server_args)
                .envs(options.server_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start {path}: {e}"))?;
            let stderr = child.stderr.take().expect("piped");
            servers.children.push(child);
            let (tx, rx) = std::sync::mpsc::channel();
            let name = format!("{kind}{i}");
            let verbose = options.verbose;
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("listening on http://") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Ok(addr.trim().to_owned()));
                            continue;
                        }
                    }
                    if verbose || tx.is_some() {
                        eprintln!("[{name}] {line}");
                    }
                    if let Some(sender) = &tx {
                        let _ = sender.send(Err(line));
                    }
                }
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let addr = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Ok(addr)) => break addr,
                    Ok(Err(_line)) => continue,
                    Err(_) => return Err(format!("{kind}{i} did not print `listening on`")),
                }
            };
            servers.addrs.push(parse_target(&addr)?);
        }
        Ok(servers)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; `rest` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Read and write system calls a process made so far (`syscr`, `syscw` of `/proc/PID/io`).
fn syscalls(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("syscr:")?, field("syscw:")?))
}

fn cpu_ticks_self() -> Option<u64> {
    cpu_ticks(std::process::id())
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn sum(pids: &[u32], f: impl Fn(u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| f(p)).sum()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// Subscribers

/// What the subscribers share with the main task.
struct Shared {
    /// Subscribers that have their stream open.
    ready: AtomicUsize,
    /// Distinct events received, all subscribers together.
    delivered: AtomicU64,
    /// When the last event was received (µs since the epoch).
    last_receive: AtomicU64,
}

/// How one subscriber is set up.
struct SubPlan {
    topic: usize,
    topic_name: String,
    target: SocketAddr,
    /// In the resume scenario: the instance to reconnect to, and the time to drop the connection
    /// (known once publishing starts).
    resume: Option<(SocketAddr, watch::Receiver<Option<Instant>>)>,
    pause: Duration,
    events: usize,
}

/// What one subscriber saw.
#[derive(Default)]
struct SubResult {
    topic: usize,
    connected: bool,
    error: Option<String>,
    seen: Vec<u64>,
    delivered: u64,
    duplicate: u64,
    out_of_order: u64,
    latencies_us: Vec<u32>,
    reconnects: u64,
    resumed: u64,
    reset: u64,
    gaps: u64,
}

/// An incremental parser of `text/event-stream` frames, keeping only what the checks need.
#[derive(Default)]
struct Parser {
    partial: Vec<u8>,
    status_event: bool,
    data: Option<(u64, u64)>,
    status_data: Option<StatusKind>,
    id_seq: Option<u64>,
    id_text: Vec<u8>,
    id_pending: Vec<u8>,
    last_id_seq: Option<u64>,
}

#[derive(Clone, Copy)]
enum StatusKind {
    Fresh,
    Resumed,
    Reset,
    Gap,
    Other,
}

impl Parser {
    /// Feeds a chunk received at `now` (µs); returns the number of new distinct events.
    fn feed(&mut self, chunk: &[u8], now: u64, r: &mut SubResult) -> u64 {
        let before = r.delivered;
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.line(line, now, r);
            } else {
                let mut full = std::mem::take(&mut self.partial);
                full.extend_from_slice(line);
                self.line(&full, now, r);
                full.clear();
                self.partial = full;
            }
        }
        self.partial.extend_from_slice(rest);
        r.delivered - before
    }

    fn line(&mut self, line: &[u8], now: u64, r: &mut SubResult) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(now, r);
        } else if let Some(v) = line.strip_prefix(b"data: ") {
            if self.status_event {
                self.status_data = Some(if contains(v, b"\"resumed\"") {
                    StatusKind::Resumed
                } else if contains(v, b"\"reset\"") {
                    StatusKind::Reset
                } else if contains(v, b"\"gap\"") {
                    StatusKind::Gap
                } else if contains(v, b"\"fresh\"") {
                    StatusKind::Fresh
                } else {
                    StatusKind::Other
                });
            } else {
                self.data = parse_data(v);
            }
        } else if let Some(v) = line.strip_prefix(b"id: ") {
            let digits = v.rsplit(|&b| b == b'-').next().unwrap_or(v);
            self.id_seq = parse_u64(digits).or_else(|| parse_time_tag(v));
            self.id_pending.clear();
            self.id_pending.extend_from_slice(v);
        } else if let Some(v) = line.strip_prefix(b"event: ") {
            self.status_event = v == b"sse-status";
        }
    }

    fn dispatch(&mut self, now: u64, r: &mut SubResult) {
        if !self.id_pending.is_empty() {
            std::mem::swap(&mut self.id_text, &mut self.id_pending);
            self.id_pending.clear();
        }
        if let Some(kind) = self.status_data.take() {
            match kind {
                StatusKind::Resumed => r.resumed += 1,
                StatusKind::Reset => r.reset += 1,
                StatusKind::Gap => r.gaps += 1,
                StatusKind::Fresh | StatusKind::Other => {}
            }
        }
        if let Some((seq, sent)) = self.data.take() {
            let word = (seq / 64) as usize;
            let bit = 1u64 << (seq % 64);
            let duplicate = match r.seen.get_mut(word) {
                Some(w) if *w & bit != 0 => true,
                Some(w) => {
                    *w |= bit;
                    false
                }
                None => false,
            };
            if duplicate {
                r.duplicate += 1;
            } else {
                r.delivered += 1;
                r.latencies_us
                    .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                if let (Some(id), Some(last)) = (self.id_seq, self.last_id_seq) {
                    if id <= last {
                        r.out_of_order += 1;
                    }
                }
            }
            if let Some(id) = self.id_seq {
                self.last_id_seq = Some(self.last_id_seq.map_or(id, |l| l.max(id)));
            }
        }
        self.status_event = false;
        self.id_seq = None;
    }

    /// A new connection starts: frames do not continue across it.
    fn reconnected(&mut self) {
        self.partial.clear();
        self.status_event = false;
        self.data = None;
        self.status_data = None;
        self.id_seq = None;
        self.id_pending.clear();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// Nchan's ids, `TIME:TAG` (seconds, then a counter within the second), as one ordered number.
fn parse_time_tag(v: &[u8]) -> Option<u64> {
    let colon = memchr::memchr(b':', v)?;
    let (time, tag) = (parse_u64(&v[..colon])?, parse_u64(&v[colon + 1..])?);
    (time < 1 << 32 && tag < 1 << 32).then_some((time << 32) | tag)
}

/// `seq=N t=MICROS[ padding]`.
fn parse_data(v: &[u8]) -> Option<(u64, u64)> {
    let v = v.strip_prefix(b"seq=")?;
    let space = memchr::memchr(b' ', v)?;
    let seq = parse_u64(&v[..space])?;
    let t = v[space + 1..].strip_prefix(b"t=")?;
    let end = memchr::memchr(b' ', t).unwrap_or(t.len());
    Some((seq, parse_u64(&t[..end])?))
}

type Conn = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// Opens a stream: connects, sends the request and waits for a `200` head.
async fn open_stream(
    target: SocketAddr,
    topic: &str,
    last_event_id: Option<&[u8]>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        Conn,
        hyper::body::Incoming,
    ),
    String,
> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, mut conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut request = Request::get(format!("/events/{topic}"))
        .header(header::HOST, target.to_string())
        .header(header::ACCEPT, "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let request = request.body(Empty::new()).expect("a valid request");
    let response = {
        let send = sender.send_request(request);
        tokio::pin!(send);
        tokio::select! {
            r = &mut send => r.map_err(|e| format!("request: {e}"))?,
            r = &mut conn => return Err(format!("connection ended early: {r:?}")),
        }
    };
    if response.status() != StatusCode::OK {
        return Err(format!("GET /events/{topic}: status {}", response.status()));
    }
    Ok((sender, conn, response.into_body()))
}

async fn subscriber(
    plan: SubPlan,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut r = SubResult {
        topic: plan.topic,
        seen: vec![0; plan.events.div_ceil(64)],
        ..SubResult::default()
    };
    let permit = gate.clone().acquire_owned().await;
    let mut opened = open_stream(plan.target, &plan.topic_name, None).await;
    drop(permit);
    let mut parser = Parser::default();
    let mut resume = plan.resume;
    let mut counted_ready = false;
    loop {
        let (sender, mut conn, mut body) = match opened {
            Ok(parts) => parts,
            Err(e) => {
                r.error = Some(e);
                if !counted_ready {
                    shared.ready.fetch_add(1, Ordering::AcqRel);
                }
                return r;
            }
        };
        r.connected = true;
        if !counted_ready {
            counted_ready = true;
            shared.ready.fetch_add(1, Ordering::AcqRel);
        }
        let mut conn_done = false;
        let outcome = {
            let disconnect = disconnect_time(resume.as_mut().map(|(_, at)| at));
            tokio::pin!(disconnect);
            loop {
                tokio::select! {
                    biased;
                    frame = body.frame() => match frame {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let now = now_us();
                                let fresh = parser.feed(&data, now, &mut r);
                                if fresh > 0 {
                                    shared.delivered.fetch_add(fresh, Ordering::Relaxed);
                                    shared.last_receive.fetch_max(now, Ordering::Relaxed);
                                }
                            }
                        }
                        Some(Err(e)) => break Some(format!("stream: {e}")),
                        None => break Some("stream ended".to_owned()),
                    },
                    _ = &mut conn, if !conn_done => conn_done = true,
                    _ = stop.changed() => break None,
                    () = &mut disconnect => break Some(String::new()),
                }
            }
        };
        drop(body);
        drop(sender);
        drop(conn);
        match outcome {
            None => return r,
            Some(reason) if !reason.is_empty() => {
                r.error = Some(reason);
                return r;
            }
            Some(_) => {}
        }
        // The resume scenario: reconnect to the next instance with the last id seen.
        let (target, _) = resume.take().expect("only with a disconnection time");
        tokio::time::sleep(plan.pause).await;
        parser.reconnected();
        r.reconnects += 1;
        let id = parser.id_text.clone();
        let permit = gate.clone().acquire_owned().await;
        opened = open_stream(
            target,
            &plan.topic_name,
            (!id.is_empty()).then_some(&id[..]),
        )
        .await;
        drop(permit);
    }
}

/// Waits for the disconnection time to be set, then until it; never without one.
async fn disconnect_time(at: Option<&mut watch::Receiver<Option<Instant>>>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let when = loop {
        if let Some(when) = *at.borrow_and_update() {
            break when;
        }
        if at.changed().await.is_err() {
            return std::future::pending().await;
        }
    };
    tokio::time::sleep_until(when).await;
}

// ---------------------------------------------------------------------------------------------
// Publishers

type PublishConn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn publish_conn(target: SocketAddr) -> Result<PublishConn, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

struct PublishJob {
    seq: usize,
    topic: Arc<str>,
}

#[derive(Default)]
struct PublishStats {
    ok: Vec<bool>,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

async fn publisher(
    target: SocketAddr,
    mut sender: PublishConn,
    mut jobs: mpsc::UnboundedReceiver<PublishJob>,
    payload: usize,
    stats: Arc<Mutex<PublishStats>>,
) {
    while let Some(job) = jobs.recv().await {
        let sent = now_us();
        let mut data = format!("seq={} t={sent}", job.seq);
        if data.len() < payload {
            data.push(' ');
            while data.len() < payload {
                data.push('x');
            }
        }
        let request = Request::post(format!("/publish/{}", job.topic))
            .header(header::HOST, target.to_string())
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(data)))
            .expect("a valid request");
        let outcome = async {
            sender.ready().await.map_err(|e| format!("{e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{e}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{e}"))?
                .to_bytes();
            // The demo answers 202; Nchan answers 201 when the channel has subscribers.
            if status == StatusCode::ACCEPTED || status == StatusCode::CREATED {
                Ok(())
            } else {
                Err(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body)
                ))
            }
        }
        .await;
        let took = now_us().saturating_sub(sent);
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                s.ok[job.seq] = true;
                s.latencies_us.push(took.min(u32::MAX as u64) as u32);
            }
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert(e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run

fn histogram(values: impl IntoIterator<Item = u32>) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for v in values {
        h.saturating_record(u64::from(v.max(1)));
    }
    h
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

async fn run_one(
    o: &Options,
    server: &str,
    targets: &[SocketAddr],
    pids: &[u32],
) -> Result<Value, String> {
    let ticks = clock_ticks_per_second();
    let m = targets.len();
    let topics = match (o.scenario, o.topics) {
        (Scenario::Topics, None) => o.subscribers.max(1),
        (_, Some(t)) => t.max(1),
        (_, None) => 1,
    };
    // Fresh topic names for every run, so history from earlier runs on the same Redis is never
    // replayed.
    let run_tag = format!("{:x}", now_us() % 0xffff_ffff);
    let topic_names: Vec<Arc<str>> = (0..topics)
        .map(|t| Arc::from(format!("lg{run_tag}.{t}")))
        .collect();
    let publishing = o.scenario != Scenario::Idle;
    let events = if publishing { o.events } else { 0 };
    let duration_planned = Duration::from_secs_f64(events as f64 / o.rate);

    let rss_before = sum(pids, rss_bytes);
    let shared = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        last_receive: AtomicU64::new(0),
    });
    let gate = Arc::new(Semaphore::new(o.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers. In the resume scenario the first `--resume-share` of them drop their
    // connection a third into the publishing and reconnect to the next instance.
    let open_start = Instant::now();
    let (resume_tx, resume_rx) = watch::channel(None::<Instant>);
    let resuming = (o.subscribers as f64 * o.resume_share).round() as usize;
    let mut handles = Vec::with_capacity(o.subscribers);
    for i in 0..o.subscribers {
        let topic = i % topics;
        let resume = (o.scenario == Scenario::Resume && i < resuming)
            .then(|| (targets[(i + 1) % m], resume_rx.clone()));
        let plan = SubPlan {
            topic,
            topic_name: topic_names[topic].to_string(),
            target: targets[i % m],
            resume,
            pause: o.pause,
            events,
        };
        handles.push(tokio::spawn(subscriber(
            plan,
            shared.clone(),
            gate.clone(),
            stop_rx.clone(),
        )));
    }
    // Wait until every subscriber has its stream open (or failed to open it).
    let open_deadline = Instant::now() + Duration::from_secs(120);
    while shared.ready.load(Ordering::Acquire) < o.subscribers {
        if Instant::now() > open_deadline {
            return Err(format!(
                "only {} of {} streams opened within 120 s",
                shared.ready.load(Ordering::Acquire),
                o.subscribers
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_secs = open_start.elapsed().as_secs_f64();

    let mut rss_after = None;
    if !publishing {
        tokio::time::sleep(o.settle).await;
        rss_after = sum(pids, rss_bytes);
    }

    // Publishers: `--publishers` connections per instance.
    let stats = Arc::new(Mutex::new(PublishStats {
        ok: vec![false; events],
        ..PublishStats::default()
    }));
    let mut queues = Vec::new();
    let mut publisher_tasks = Vec::new();
    if publishing {
        for &target in targets {
            let mut per_instance = Vec::new();
            for _ in 0..o.publishers {
                let (tx, rx) = mpsc::unbounded_channel();
                let sender = publish_conn(target).await?;
                publisher_tasks.push(tokio::spawn(publisher(
                    target,
                    sender,
                    rx,
                    o.payload,
                    stats.clone(),
                )));
                per_instance.push(tx);
            }
            queues.push(per_instance);
        }
    }

    // Time to attach a profiler to the servers, say, between opening and publishing.
    tokio::time::sleep(o.warmup).await;
    let sys_before: Vec<_> = pids.iter().map(|&p| syscalls(p)).collect();
    let cpu_before = sum(pids, cpu_ticks);
    let self_before = cpu_ticks_self();
    let redis_before = o.redis_pid.and_then(cpu_ticks);
    let start = Instant::now();
    let start_us = now_us();
    let _ = resume_tx.send(Some(start + duration_planned / 3));
    if publishing {
        let period = Duration::from_secs_f64(1.0 / o.rate);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for seq in 0..events {
            tick.tick().await;
            let instance = seq % m;
            let conn = (seq / m) % o.publishers;
            let job = PublishJob {
                seq,
                topic: topic_names[seq % topics].clone(),
            };
            let _ = queues[instance][conn].send(job);
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();
    drop(queues);
    for task in publisher_tasks {
        let _ = task.await;
    }

    // How many deliveries to wait for: every subscriber that opened its stream gets every
    // event of its topic that was published.
    let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(|e| e.into_inner()));
    let mut subs_per_topic = vec![0u64; topics];
    for i in 0..o.subscribers {
        subs_per_topic[i % topics] += 1;
    }
    let expected_guess: u64 = (0..events)
        .filter(|&j| stats.ok[j])
        .map(|j| subs_per_topic[j % topics])
        .sum();
    let drain_deadline = Instant::now() + o.drain;
    if publishing {
        while shared.delivered.load(Ordering::Relaxed) < expected_guess
            && Instant::now() < drain_deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let cpu_after = sum(pids, cpu_ticks);
    let sys_after: Vec<_> = pids.iter().map(|&p| syscalls(p)).collect();
    let self_after = cpu_ticks_self();
    let redis_after = o.redis_pid.and_then(cpu_ticks);
    if publishing {
        rss_after = sum(pids, rss_bytes);
    }
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.map_err(|e| format!("subscriber task: {e}"))?);
    }

    // Tally.
    let mut per_topic = vec![[0u64; 5]; topics]; // expected, delivered, missing, dup, ooo
    let mut connect_errors = 0u64;
    let mut stream_errors = 0u64;
    let mut first_error = None;
    let (mut reconnects, mut resumed, mut reset, mut gaps) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    for r in &results {
        if !r.connected {
            connect_errors += 1;
            first_error = first_error.or(r.error.clone());
            continue;
        }
        if r.error.is_some() {
            stream_errors += 1;
            first_error = first_error.or(r.error.clone());
        }
        let t = &mut per_topic[r.topic];
        let mut j = r.topic;
        while j < events {
            if stats.ok[j] {
                t[0] += 1;
                if r.seen[j / 64] & (1 << (j % 64)) == 0 {
                    t[2] += 1;
                }
            }
            j += topics;
        }
        t[1] += r.delivered;
        t[3] += r.duplicate;
        t[4] += r.out_of_order;
        reconnects += r.reconnects;
        resumed += r.resumed;
        reset += r.reset;
        gaps += r.gaps;
        latencies.extend_from_slice(&r.latencies_us);
    }
    let total = |k: usize| per_topic.iter().map(|t| t[k]).sum::<u64>();
    let (expected, delivered, missing, duplicate, out_of_order) =
        (total(0), total(1), total(2), total(3), total(4));
    let lat = histogram(latencies);
    let publish_lat = histogram(stats.latencies_us.iter().copied());
    let last = shared.last_receive.load(Ordering::Relaxed);
    let active_secs = if last > start_us {
        (last - start_us) as f64 / 1e6
    } else {
        publish_secs
    };
    let secs = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / ticks),
        _ => None,
    };
    let server_cpu = secs(cpu_before, cpu_after);
    let cpu_us_per_delivery = match server_cpu {
        Some(c) if delivered > 0 => Some(c * 1e6 / delivered as f64),
        _ => None,
    };
    // Write system calls per delivery: below one means frames shared writes.
    let (mut reads, mut writes, mut known) = (0u64, 0u64, !pids.is_empty());
    for (b, a) in sys_before.iter().zip(&sys_after) {
        match (b, a) {
            (Some(b), Some(a)) => {
                reads += a.0.saturating_sub(b.0);
                writes += a.1.saturating_sub(b.1);
            }
            _ => known = false,
        }
    }
    let per_delivery = |n: u64| (known && delivered > 0).then(|| n as f64 / delivered as f64);
    let connections = o.subscribers as u64 - connect_errors;
    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connections > 0 => {
            Some(a.saturating_sub(b) as f64 / connections as f64)
        }
        _ => None,
    };
    let per_topic_json = (topics <= 16).then(|| {
        per_topic
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    topic_names[i].to_string(),
                    json!({"expected": t[0], "delivered": t[1], "missing": t[2],
                           "duplicate": t[3], "out_of_order": t[4]}),
                )
            })
            .collect::<BTreeMap<_, _>>()
    });
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    let result = json!({
        "scenario": o.scenario.name(),
        "server": server,
        "server_args": o.server_args,
        "server_env": o.server_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "backend": o.backend,
        "instances": m,
        "subscribers": o.subscribers,
        "topics": topics,
        "events": events,
        "rate": o.rate,
        "payload": o.payload,
        "published": stats.ok.iter().filter(|&&ok| ok).count(),
        "publish_errors": stats.errors,
        "publish_error": stats.first_error,
        "expected": expected,
        "delivered": delivered,
        "missing": missing,
        "duplicate": duplicate,
        "out_of_order": out_of_order,
        "connect_errors": connect_errors,
        "stream_errors": stream_errors,
        "first_error": first_error,
        "reconnects": reconnects,
        "resumed": resumed,
        "reset": reset,
        "gaps": gaps,
        "latency_us": percentiles(&lat),
        "publish_latency_us": percentiles(&publish_lat),
        "open_secs": round(open_secs, 3),
        "publish_secs": round(publish_secs, 3),
        "active_secs": round(active_secs, 3),
        "deliveries_per_s": if active_secs > 0.0 { round(delivered as f64 / active_secs, 0) } else { 0.0 },
        "server_cpu_s": server_cpu.map(|c| round(c, 3)),
        "cpu_us_per_delivery": cpu_us_per_delivery.map(|c| round(c, 3)),
        "server_writes_per_delivery": per_delivery(writes).map(|x| round(x, 4)),
        "server_reads_per_delivery": per_delivery(reads).map(|x| round(x, 4)),
        "loadgen_cpu_s": secs(self_before, self_after).map(|c| round(c, 3)),
        "redis_cpu_s": secs(redis_before, redis_after).map(|c| round(c, 3)),
        "server_rss_before": rss_before,
        "server_rss_after": rss_after,
        "rss_per_conn_bytes": rss_per_conn.map(|c| round(c, 0)),
        "per_topic": per_topic_json,
        "label": o.label,
        "unix_time": start_us / 1_000_000,
    });
    summary(&result);
    Ok(result)
}

fn summary(r: &Value) {
    let lat = &r["latency_us"];
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".to_owned(), |us| format!("{:.1}", us / 1000.0))
    };
    eprintln!(
        "{} [{}] {} subscribers on {} instance(s), {} topic(s), {} events at {}/s",
        r["scenario"].as_str().unwrap_or(""),
        r["server"].as_str().unwrap_or(""),
        r["subscribers"],
        r["instances"],
        r["topics"],
        r["events"],
        r["rate"]
    );
    if r["events"].as_u64().unwrap_or(0) > 0 {
        eprintln!(
            "  delivered {} of {} expected: missing {}, duplicate {}, out of order {}; \
             published {} ({} errors); {} reconnects ({} resumed, {} reset)",
            r["delivered"],
            r["expected"],
            r["missing"],
            r["duplicate"],
            r["out_of_order"],
            r["published"],
            r["publish_errors"],
            r["reconnects"],
            r["resumed"],
            r["reset"],
        );
        eprintln!(
            "  latency ms: p50 {} p90 {} p99 {} max {}; {} deliveries/s",
            ms(&lat["p50"]),
            ms(&lat["p90"]),
            ms(&lat["p99"]),
            ms(&lat["max"]),
            r["deliveries_per_s"]
        );
        eprintln!(
            "  server CPU {} s = {} µs per delivery, {} writes per delivery; loadgen CPU {} s; \
             redis CPU {} s",
            r["server_cpu_s"],
            r["cpu_us_per_delivery"],
            r["server_writes_per_delivery"],
            r["loadgen_cpu_s"],
            r["redis_cpu_s"]
        );
    }
    eprintln!(
        "  server RSS {} -> {} bytes = {} bytes per connection; {} connect errors, {} stream errors{}",
        r["server_rss_before"],
        r["server_rss_after"],
        r["rss_per_conn_bytes"],
        r["connect_errors"],
        r["stream_errors"],
        r["first_error"]
            .as_str()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}
