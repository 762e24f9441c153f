//! The command line.

use std::{net::SocketAddr, time::Duration};

const USAGE: &str = "usage: loadgen [--scenario fanout|topics|resume|idle] \
[--target URL[,URL...]] [--spawn-demo PATH] [--spawn-baseline PATH] [--instances M] \
[--backend memory|pubsub] [--redis URL] [--server-arg ARG]... [--server-env NAME=VALUE]... [--pids PID[,PID...]] \
[--redis-pid PID] [--subscribers N] [--topics T] [--events K] [--rate R] [--payload BYTES] \
[--publishers P] [--drain-ms MS] [--resume-share F] [--pause-ms MS] [--settle-ms MS] [--hold-ms MS] \
[--warmup-ms MS] \
[--connect-concurrency C] [--threads N] [--label TEXT] [--max-secs S] [--verbose]";

/// What a run does (`--scenario`); see the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    Fanout,
    Topics,
    Resume,
    Idle,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Topics => "topics",
            Scenario::Resume => "resume",
            Scenario::Idle => "idle",
        }
    }
}

/// What to run, against what.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) scenario: Scenario,
    pub(crate) targets: Vec<SocketAddr>,
    pub(crate) spawn: Vec<(String, String)>,
    pub(crate) instances: usize,
    pub(crate) backend: Option<String>,
    pub(crate) redis: Option<String>,
    pub(crate) server_args: Vec<String>,
    pub(crate) server_env: Vec<(String, String)>,
    pub(crate) pids: Vec<u32>,
    pub(crate) redis_pid: Option<u32>,
    pub(crate) subscribers: usize,
    pub(crate) topics: Option<usize>,
    pub(crate) events: usize,
    pub(crate) rate: f64,
    pub(crate) payload: usize,
    pub(crate) publishers: usize,
    pub(crate) drain: Duration,
    pub(crate) resume_share: f64,
    pub(crate) pause: Duration,
    pub(crate) settle: Duration,
    /// Idle scenario: how long the streams stay open while the servers' CPU is measured.
    pub(crate) hold: Duration,
    pub(crate) warmup: Duration,
    pub(crate) connect_concurrency: usize,
    pub(crate) threads: usize,
    pub(crate) label: Option<String>,
    pub(crate) max_secs: u64,
    pub(crate) verbose: bool,
}

pub(crate) fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
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
        hold: Duration::ZERO,
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
            "--hold-ms" => o.hold = Duration::from_millis(num(&name, &value()?)?),
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
pub(crate) fn parse_target(t: &str) -> Result<SocketAddr, String> {
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
