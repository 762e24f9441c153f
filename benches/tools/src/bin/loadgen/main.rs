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
//! cargo build --release --example demo && cargo build --release -p tower-sse-bench
//! target/release/loadgen --scenario fanout --spawn-demo target/release/examples/demo \
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
//!   connection: (RSS with the connections open − RSS before) / connections; with
//!   `--hold-ms MS`, keep them open that long and report the servers' CPU per second of it
//!   (`idle_cpu_per_s`).
//!
//! Only loopback targets are accepted. Every run is bounded (`--max-secs`) and stops by itself.
//! Many connections need a raised file descriptor limit (`ulimit -n`); `benches/run-load.sh`
//! sets it.
//!
//! One file per concern: `options` (the command line), `servers` (instances it starts),
//! `subscriber` and `parser` (reading and checking the streams), `publisher`, `run` (one measured
//! run), `report` (percentiles, the summary, the comparison of two servers) and `proc` (readings
//! of `/proc`).

// The result object (run.rs) is one large `json!` literal.
#![recursion_limit = "256"]

mod options;
mod parser;
mod proc;
mod publisher;
mod report;
mod run;
mod servers;
mod subscriber;

use std::{
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use options::{parse_options, Options};
use servers::Servers;

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
        results.push(run::run_one(&options, &label, &targets, &pids).await?);
    } else {
        for (kind, path) in &options.spawn {
            let servers = Servers::spawn(&options, kind, path)?;
            let label = match &options.label {
                Some(l) => format!("{kind}:{l}"),
                None => kind.clone(),
            };
            let result = run::run_one(&options, &label, &servers.addrs, &servers.pids()).await;
            drop(servers);
            results.push(result?);
        }
    }
    for r in &results {
        println!("{r}");
    }
    if let [first, second] = &results[..] {
        println!("{}", report::compare(first, second));
    }
    Ok(())
}

/// Now, in µs since the Unix epoch: the clock of the events' send and receive times.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
