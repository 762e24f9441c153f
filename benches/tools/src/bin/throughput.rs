//! One stream's throughput: how many events per second, and MiB per second, a single stream
//! sustains with the layer's default settings, read by a client as fast as the loopback allows.
//!
//! The server is the layer on the in-process bus, served by `tower_sse::server::Server` on a
//! free loopback port. The client is a plain blocking socket on a thread of its own that reads
//! the stream and counts the events. The publisher publishes events of `--size` bytes back to
//! back into the bus, and waits only when more than `--window` bytes (default 4 MiB) or 960
//! events are published but not yet read: the stream never holds more than its queue's default
//! bounds (1 024 events, 8 MiB), and more than one 64 KiB write's worth whenever the client
//! keeps up, so it writes as fast as the socket takes it.
//!
//! ```text
//! cargo run --release -p tower-sse-bench --bin throughput -- --size 8192 --events 20000
//! ```
//!
//! Prints one JSON line: the event size, the events, the seconds from the first publish to the
//! last event read, events/s, MiB/s of event data and of bytes on the wire, and the process's CPU
//! seconds (server and client together).

use std::{
    convert::Infallible,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_sse::{server::Server, Event, EventBus, SseLayer};

const USAGE: &str = "usage: throughput [--size BYTES] [--events N] [--window BYTES]";

struct Options {
    size: usize,
    events: u64,
    window: u64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        size: 8192,
        events: 20_000,
        window: 4 << 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{name} needs a value; {USAGE}"))?;
        let bad = |_| format!("{name} {value:?}: expected a number");
        match name.as_str() {
            "--size" => o.size = value.parse().map_err(bad)?,
            "--events" => o.events = value.parse().map_err(bad)?,
            "--window" => o.window = value.parse().map_err(bad)?,
            _ => return Err(USAGE.to_owned()),
        }
    }
    if o.size == 0 || o.events == 0 {
        return Err("--size and --events must be positive".to_owned());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("throughput: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(&o)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn not_found(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"not found")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    Ok(response)
}

async fn run(o: &Options) -> Result<String, String> {
    let bus = EventBus::memory();
    let listener =
        tower_sse::server::listen(([127, 0, 0, 1], 0).into()).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let service = ServiceBuilder::new()
        .layer(SseLayer::new(bus.clone()).public())
        .service_fn(not_found);
    tokio::spawn(Server::new().serve(listener, service, std::future::pending::<()>()));

    let read = Arc::new(AtomicU64::new(0));
    let client = {
        let (read, events) = (read.clone(), o.events);
        std::thread::spawn(move || client(addr, events, &read))
    };
    // The stream is open once the status event arrived (the client counts it as event 0).
    let opened = Instant::now();
    while read.load(Ordering::Acquire) == 0 {
        if opened.elapsed() > Duration::from_secs(10) {
            return Err("the stream did not open within 10 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let cpu_before = cpu_seconds();
    let start = Instant::now();
    publish(&bus, o, &read).await?;
    let (wire_bytes, finished) = tokio::task::spawn_blocking(move || client.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the client panicked".to_owned())??;
    let secs = finished.duration_since(start).as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let mib = |bytes: f64| bytes / secs / f64::from(1 << 20);
    Ok(format!(
        "{{\"size\":{},\"events\":{},\"secs\":{:.3},\"events_per_s\":{:.0},\"data_mib_per_s\":{:.1},\
\"wire_mib_per_s\":{:.1},\"cpu_s\":{:.3}}}",
        o.size,
        o.events,
        secs,
        o.events as f64 / secs,
        mib(o.size as f64 * o.events as f64),
        mib(wire_bytes as f64),
        cpu,
    ))
}

/// Publishes `events` events of `size` bytes, keeping at most `window` bytes (and 960 events)
/// unread.
async fn publish(bus: &EventBus, o: &Options, read: &AtomicU64) -> Result<(), String> {
    let data = "x".repeat(o.size);
    // Within the stream queue's default bounds (1 024 events, 8 MiB), a little below them.
    let in_flight = (o.window / o.size as u64).clamp(1, 960);
    for sent in 0..o.events {
        // `read` counts the status event too: events read so far = read - 1.
        while sent.saturating_sub(read.load(Ordering::Acquire).saturating_sub(1)) >= in_flight {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        bus.publish("bench", Event::new(data.clone()))
            .await
            .map_err(|e| format!("publish: {e}"))?;
    }
    Ok(())
}

/// Reads the stream until `events` events (after the opening status event) arrived; returns
/// the bytes read and when the last event arrived. Counts an event per `\n\n` that ends a frame
/// with a `data:` field.
fn client(addr: SocketAddr, events: u64, read: &AtomicU64) -> Result<(u64, Instant), String> {
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket
        .write_all(
            b"GET /events/bench HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n",
        )
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0; 256 << 10];
    let mut frames = Frames::default();
    let mut total = 0u64;
    while frames.events < events + 1 {
        let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "the server closed the stream after {} of {events} events",
                frames.events.saturating_sub(1)
            ));
        }
        total += n as u64;
        frames.feed(&buf[..n]);
        read.store(frames.events, Ordering::Release);
    }
    Ok((total, Instant::now()))
}

/// Counts frames that carry data, across reads of any size. A frame ends with an empty line;
/// chunk-size lines of the HTTP/1.1 body sit between frames and carry no `data:`.
#[derive(Default)]
struct Frames {
    events: u64,
    /// The last two bytes seen, to find `\n\n` and line starts across reads.
    tail: [u8; 2],
    /// Bytes of the current line matched against `data:` so far (`None`: not a match).
    prefix: Option<usize>,
    has_data: bool,
}

impl Frames {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                if self.prefix == Some(5) {
                    self.has_data = true;
                }
                if self.tail[1] == b'\n' || (self.tail[1] == b'\r' && self.tail[0] == b'\n') {
                    self.end_frame();
                }
                self.prefix = Some(0);
            } else if let Some(i) = self.prefix {
                self.prefix = match (b"data:".get(i), i) {
                    (Some(&want), _) if want == b => Some(i + 1),
                    (None, _) => {
                        self.has_data = true;
                        None
                    }
                    _ => None,
                };
            }
            self.tail = [self.tail[1], b];
        }
    }

    fn end_frame(&mut self) {
        if self.has_data {
            self.events += 1;
        }
        self.has_data = false;
    }
}

/// The process's user and system CPU time, in seconds (Linux only; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
