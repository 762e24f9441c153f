//! The tower-sse demo server: live events over SSE, on the in-process bus or through Redis.
//!
//! ```text
//! cargo run --example demo                      # in-process bus, http://127.0.0.1:3000
//! cargo run --example demo -- --redis redis://127.0.0.1:6379 --listen 127.0.0.1:3001
//! ```
//!
//! Open the page, subscribe to a topic, publish to it, and watch the event arrive; run two
//! instances on one Redis and publish on one, watch the other.
//!
//! HTTP surface:
//! - `GET /`: the page.
//! - `GET /events/{topic}`, `GET /events?topic=A&topic=B`: event streams (resume with
//!   `Last-Event-ID` or `?last_event_id=`).
//! - `POST /publish/{topic}` with the data as body (`?event=NAME` sets the type): `202` and
//!   `{"id": "..."}`.
//! - `GET /healthz`: `200`, or `503` with the reason when the bus backend is not connected.
//! - `GET /metrics`: the server's metrics in the Prometheus text format.
//!
//! With `--jwt-secret SECRET`, streams and publishes need an HS256 JWT signed with the secret
//! (`Authorization: Bearer`, `?access_token=` or cookie `sse_token`) whose `subscribe` and
//! `publish` claims select the topics.
//!
//! Besides the options of the contract, `--redis-mode interest|pattern` chooses how an instance
//! subscribes to Redis (see `SubscribeMode`; default `interest`), and these set up the
//! connection layer (`tower_sse::server::Server`; seconds may have a fraction, 0 turns a
//! timeout off):
//!
//! - `--max-open-connections N`: the most connections of every kind open at once; past it the
//!   demo stops accepting until one closes (default: below the process's descriptor limit).
//!   `--max-connections` stays the cap on event streams.
//! - `--header-read-timeout SECS` (default 30), `--idle-timeout SECS` (default 60),
//!   `--write-timeout SECS` (default 30).

use std::{convert::Infallible, net::SocketAddr, process::ExitCode, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use percent_encoding::percent_decode_str;
use tower::ServiceBuilder;
use tower_sse::{
    server::Server, Authorize, Event, EventBus, JwtPolicy, RedisConfig, SseLayer, SubscribeMode,
    Topic,
};

const PAGE: &str = include_str!("demo.html");

const USAGE: &str = "usage: demo [--listen ADDR] [--backend memory|pubsub|streams] [--redis URL] \
[--redis-cluster URL[,URL...]] [--jwt-secret SECRET] [--max-connections N] \
[--max-event-bytes N] [--keep-alive SECS] [--redis-mode interest|pattern] \
[--max-open-connections N] [--header-read-timeout SECS] [--idle-timeout SECS] \
[--write-timeout SECS]";

#[derive(Debug)]
struct Options {
    listen: SocketAddr,
    backend: Backend,
    redis: Option<String>,
    redis_cluster: Option<Vec<String>>,
    redis_mode: SubscribeMode,
    jwt_secret: Option<String>,
    max_connections: Option<usize>,
    max_event_bytes: usize,
    keep_alive: Duration,
    max_open_connections: Option<usize>,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    PubSub,
    Streams,
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
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

    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            return Err(USAGE.to_owned());
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

async fn build_bus(options: &Options) -> Result<EventBus, String> {
    let builder = EventBus::builder().max_event_bytes(options.max_event_bytes);
    let config = match (&options.redis_cluster, &options.redis) {
        (Some(nodes), _) => Some(RedisConfig::cluster(nodes.clone()).mode(options.redis_mode)),
        (None, Some(url)) => Some(RedisConfig::new(url.clone()).mode(options.redis_mode)),
        (None, None) => None,
    };
    match (options.backend, config) {
        (Backend::Memory, _) => Ok(builder.memory()),
        (Backend::PubSub, Some(config)) => builder
            .redis_pubsub(config)
            .await
            .map_err(|e| e.to_string()),
        (Backend::Streams, Some(config)) => builder
            .redis_streams(config)
            .await
            .map_err(|e| e.to_string()),
        (_, None) => {
            Err("--backend pubsub and streams need --redis URL or --redis-cluster".to_owned())
        }
    }
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("demo: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // The recorder comes first: the bus and the streams look their metrics up when created.
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    tower_sse::metrics::describe();

    let bus = build_bus(&options).await?;
    let mut layer = SseLayer::new(bus.clone()).keep_alive(Some(options.keep_alive));
    // Tuning knob for load tests: the streams' write delay in milliseconds (fractions allowed).
    if let Some(ms) = std::env::var("TOWER_SSE_WRITE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        layer = layer.write_delay(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(max) = options.max_connections {
        layer = layer.max_streams(max);
    }
    let policy = options.jwt_secret.as_deref().map(JwtPolicy::hs256);
    // Who may subscribe: the token's claims, or (without --jwt-secret) anyone, as a demo is.
    layer = match &policy {
        Some(policy) => layer.authorize(policy.clone()),
        None => layer.public(),
    };
    let app = App {
        max_event_bytes: options.max_event_bytes,
        policy,
        metrics,
    };
    let service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req| handle(req, app.clone()));

    // A listen queue of 1 024: at the connection cap, new clients wait there.
    let listener = tower_sse::server::listen(options.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("listening on http://{addr}");

    let server = Server::new()
        // HTTP/1.1 only (what `EventSource` and the contract use): a connection then holds no
        // HTTP/2 state, and no protocol detection runs before the first request.
        .http1_only()
        // hyper's smallest HTTP/1 buffer limit (request heads up to 8 KiB): an open stream then
        // keeps an 8 KiB read buffer instead of 16 KiB, about 6 KiB less memory per connection.
        .http1_max_buf_size(8192)
        .header_read_timeout(options.header_read_timeout)
        .idle_timeout(options.idle_timeout)
        .write_timeout(options.write_timeout);
    let server = match options.max_open_connections {
        Some(max) => server.max_connections(max),
        None => server,
    };
    // On SIGINT or SIGTERM: stop accepting and end every open stream (clients reconnect
    // elsewhere); the server then lets connections finish, for 5 s at most.
    let shutdown = async move {
        shutdown_signal().await;
        bus.shutdown();
    };
    server.serve(listener, service, shutdown).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    max_event_bytes: usize,
    /// Who may publish where (with `--jwt-secret`).
    policy: Option<JwtPolicy>,
    metrics: PrometheusHandle,
}

async fn handle(req: Request<Incoming>, app: App) -> Result<Response<Full<Bytes>>, Infallible> {
    // The layer put the bus into the request's extensions.
    let bus = req
        .extensions()
        .get::<EventBus>()
        .expect("SseLayer inserts the bus")
        .clone();
    let path = req.uri().path().to_owned();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/") => {
            let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/healthz") => {
            let health = bus.health();
            match health.problem() {
                None => text(StatusCode::OK, "ok"),
                Some(problem) => text(StatusCode::SERVICE_UNAVAILABLE, problem),
            }
        }
        (&Method::GET, "/metrics") => {
            tower_sse::metrics::record_stats(&bus);
            app.metrics.run_upkeep();
            let mut r = Response::new(Full::new(Bytes::from(app.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::POST, p) if p.starts_with("/publish/") => {
            let topic = percent_decode_str(&p["/publish/".len()..]).decode_utf8_lossy();
            publish(&bus, &topic, req, &app).await
        }
        (_, "/publish") => text(StatusCode::NOT_FOUND, "publish with POST /publish/{topic}"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    })
}

async fn publish(
    bus: &EventBus,
    topic: &str,
    req: Request<Incoming>,
    app: &App,
) -> Response<Full<Bytes>> {
    let max_event_bytes = app.max_event_bytes;
    let event_type = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "event")
            .map(|(_, v)| v.into_owned())
    });
    let topic = match Topic::new(topic) {
        Ok(topic) => topic,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let (parts, body) = req.into_parts();
    if let Some(policy) = &app.policy {
        if let Err(denied) = policy.publish(&parts, &topic).await {
            return denied.into_response();
        }
    }
    let body = match Limited::new(body, max_event_bytes).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("event data is larger than the limit of {max_event_bytes} bytes"),
            )
        }
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
    };
    let Ok(data) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "event data must be UTF-8 text");
    };
    let mut event = Event::new(data);
    if let Some(name) = event_type.filter(|n| !n.is_empty()) {
        event = match event.event(name) {
            Ok(event) => event,
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        };
    }
    match bus.publish(topic, event).await {
        Ok(published) => {
            let body = format!(
                "{{\"id\":\"{}\",\"local_only\":{}}}",
                published.id(),
                published.is_local_only()
            );
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = StatusCode::ACCEPTED;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(e.status_code(), &e.to_string()),
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
