//! The demo's command line (see the module docs of `main.rs` and CONTRACT.md).

use std::{net::SocketAddr, time::Duration};

use tower_sse::SubscribeMode;

pub(crate) const USAGE: &str =
    "usage: demo [--listen ADDR] [--backend memory|pubsub|streams] [--redis URL] \
[--redis-cluster URL[,URL...]] [--jwt-secret SECRET] [--max-connections N] \
[--max-event-bytes N] [--keep-alive SECS] [--redis-mode interest|pattern] \
[--max-open-connections N] [--header-read-timeout SECS] [--idle-timeout SECS] \
[--write-timeout SECS] [--presence-ttl SECS] [--presence-events]";

#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) listen: SocketAddr,
    pub(crate) backend: Backend,
    pub(crate) redis: Option<String>,
    pub(crate) redis_cluster: Option<Vec<String>>,
    pub(crate) redis_mode: SubscribeMode,
    pub(crate) jwt_secret: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_event_bytes: usize,
    pub(crate) keep_alive: Duration,
    pub(crate) max_open_connections: Option<usize>,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) presence_ttl: Duration,
    pub(crate) presence_events: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    PubSub,
    Streams,
}

pub(crate) fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut listen = std::env::var("LISTEN").ok();
    let mut backend = None;
    let mut redis = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let mut redis_cluster = None;
    let mut redis_mode = SubscribeMode::Interest;
    let mut jwt_secret = None;
    let mut max_connections = None;
    let mut max_event_bytes = 1_048_576;
    let mut keep_alive = 15;
    let mut max_open_connections = None;
    let mut header_read_timeout = Some(Duration::from_secs(30));
    let mut idle_timeout = Some(Duration::from_secs(60));
    let mut write_timeout = Some(Duration::from_secs(30));
    let mut presence_ttl = Duration::from_secs(30);
    let mut presence_events = false;

    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            return Err(USAGE.to_owned());
        }
        if name == "--presence-events" {
            presence_events = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => listen = Some(value()?),
            "--backend" => {
                backend = Some(match value()?.as_str() {
                    "memory" => Backend::Memory,
                    "pubsub" => Backend::PubSub,
                    "streams" => Backend::Streams,
                    other => {
                        return Err(format!(
                            "--backend {other:?}: expected memory, pubsub or streams"
                        ))
                    }
                })
            }
            "--redis" => redis = Some(value()?),
            "--redis-cluster" => {
                redis_cluster = Some(value()?.split(',').map(str::to_owned).collect())
            }
            "--redis-mode" => {
                redis_mode = match value()?.as_str() {
                    "interest" => SubscribeMode::Interest,
                    "pattern" => SubscribeMode::Pattern,
                    other => {
                        return Err(format!(
                            "--redis-mode {other:?}: expected interest or pattern"
                        ))
                    }
                }
            }
            "--jwt-secret" => jwt_secret = Some(value()?),
            "--max-connections" => max_connections = Some(number(&name, &value()?)?),
            "--max-event-bytes" => max_event_bytes = number(&name, &value()?)?,
            "--keep-alive" => keep_alive = number(&name, &value()?)? as u64,
            "--max-open-connections" => {
                max_open_connections = Some(number(&name, &value()?)?.max(1))
            }
            "--header-read-timeout" => header_read_timeout = timeout(&name, &value()?)?,
            "--idle-timeout" => idle_timeout = timeout(&name, &value()?)?,
            "--write-timeout" => write_timeout = timeout(&name, &value()?)?,
            "--presence-ttl" => {
                presence_ttl = timeout(&name, &value()?)?
                    .filter(|ttl| *ttl >= Duration::from_secs(1))
                    .ok_or_else(|| format!("{name}: expected at least 1 second"))?
            }
            _ => return Err(format!("unknown option {arg:?}; {USAGE}")),
        }
    }

    let listen = listen.as_deref().unwrap_or("127.0.0.1:3000");
    let listen = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?}: expected an address like 127.0.0.1:3000"))?;
    let redis_given = redis.is_some() || redis_cluster.is_some();
    let backend = backend.unwrap_or(if redis_given {
        Backend::PubSub
    } else {
        Backend::Memory
    });
    if backend != Backend::Memory && !redis_given {
        return Err(
            "--backend pubsub and streams need --redis URL (or REDIS_URL) or --redis-cluster"
                .to_owned(),
        );
    }
    Ok(Options {
        listen,
        backend,
        redis,
        redis_cluster,
        redis_mode,
        jwt_secret,
        max_connections,
        max_event_bytes,
        keep_alive: Duration::from_secs(keep_alive),
        max_open_connections,
        header_read_timeout,
        idle_timeout,
        write_timeout,
        presence_ttl,
        presence_events,
    })
}

fn number(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{name} {value:?}: expected a whole number"))
}

/// Seconds, with a fraction if wanted; 0 turns the timeout off.
fn timeout(name: &str, value: &str) -> Result<Option<Duration>, String> {
    let secs = value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{name} {value:?}: expected seconds, like 30 or 0.5"))?;
    Ok((!secs.is_zero()).then_some(secs))
}
