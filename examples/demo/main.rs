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
//! - `GET /presence/{topic}`: `200` with `{"topic":"t","subscribers":N,"complete":true}`, the
//!   streams following the topic on every instance (with `--jwt-secret`, the token must allow
//!   subscribing to it).
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
//!
//! And for presence: `--presence-ttl SECS` (default 30, at least 1), how long a killed
//! instance's streams are still counted on Redis; `--presence-events`, publish `sse-presence`
//! events on `{topic}@presence` when a topic's streams come and go.

mod options;
mod presence;
mod routes;

use std::{process::ExitCode, time::Duration};

use metrics_exporter_prometheus::PrometheusBuilder;
use tower::ServiceBuilder;
use tower_sse::{server::Server, EventBus, JwtPolicy, PublishService, RedisConfig, SseLayer};

use crate::{
    options::{parse_options, Backend, Options},
    routes::{handle, App},
};

async fn build_bus(options: &Options) -> Result<EventBus, String> {
    let builder = EventBus::builder()
        .max_event_bytes(options.max_event_bytes)
        .presence_events(options.presence_events);
    let config = match (&options.redis_cluster, &options.redis) {
        (Some(nodes), _) => Some(RedisConfig::cluster(nodes.clone()).mode(options.redis_mode)),
        (None, Some(url)) => Some(RedisConfig::new(url.clone()).mode(options.redis_mode)),
        (None, None) => None,
    };
    let config = config.map(|c| c.presence_ttl(options.presence_ttl));
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
    let publish = PublishService::new(bus.clone());
    let publish = match &policy {
        Some(policy) => publish.authorize(policy.clone()),
        None => publish.public(),
    };
    let app = App {
        publish,
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
    // Tuning knob for load tests: `TOWER_SSE_NODELAY=0` leaves Nagle's algorithm on.
    let server = server.nodelay(std::env::var("TOWER_SSE_NODELAY").as_deref() != Ok("0"));
    // On SIGINT or SIGTERM: stop accepting and end every open stream (clients reconnect
    // elsewhere); the server then lets connections finish, for 5 s at most.
    let shutdown = async move {
        shutdown_signal().await;
        bus.shutdown();
        // This instance's presence counts leave Redis before the process does.
        bus.closed().await;
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
