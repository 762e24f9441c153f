//! The load bench's baseline: SSE as it is commonly written by hand with axum, for comparison
//! with the demo server.
//!
//! One `tokio::sync::broadcast` channel per topic; every subscriber turns each message into an
//! `axum::response::sse::Event` itself. Across instances, publishes go through Redis: `POST`
//! does a `PUBLISH` on `baseline:t:{topic}`, and every instance listens with one
//! `PSUBSCRIBE baseline:t:*` and feeds the messages into its broadcast channels. Event ids are
//! a counter of the instance; there is no history, so `Last-Event-ID` is not honoured.
//!
//! It serves the part of the demo's surface the load generator uses:
//!
//! - `GET /events/{topic}`: `200 text/event-stream` with `id:` and `data:` fields.
//! - `POST /publish/{topic}` (body: the data): `202` and `{"id":"N"}`.
//! - `GET /healthz`: `200`.
//!
//! ```text
//! cargo run --release -p tower-sse-bench --bin baseline -- --listen 127.0.0.1:3100 --redis redis://127.0.0.1:6390
//! ```
//!
//! Options: `--listen ADDR` (default `127.0.0.1:3000`), `--redis URL` (without it, or with
//! `--backend memory`, publishes stay in the instance), `--backend memory|pubsub`,
//! `--keep-alive SECS` (default 15). It prints `listening on http://ADDR` to stderr once it
//! accepts connections.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Router,
};
use futures_util::{stream, Stream, StreamExt};
use redis::AsyncCommands;
use tokio::{net::TcpListener, sync::broadcast};

/// Messages a subscriber may fall behind before it skips ahead.
const CHANNEL_CAPACITY: usize = 1024;

/// A message as the broadcast channels carry it.
type Message = (u64, Arc<str>);

#[derive(Clone)]
struct AppState {
    topics: Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>,
    next_id: Arc<AtomicU64>,
    redis: Option<redis::aio::MultiplexedConnection>,
    keep_alive: Duration,
}

impl AppState {
    fn sender(&self, topic: &str) -> broadcast::Sender<Message> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .clone()
    }

    /// Hands a message to the local subscribers of `topic`, numbering it.
    fn deliver(&self, topic: &str, data: Arc<str>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = topics.get(topic) {
            let _ = sender.send((id, data));
        }
        id
    }
}

struct Options {
    listen: SocketAddr,
    redis: Option<String>,
    keep_alive: Duration,
}

fn parse_options() -> Result<Options, String> {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut redis = None;
    let mut memory = false;
    let mut keep_alive = 15;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--redis" => redis = Some(value()?),
            "--backend" => memory = value()? == "memory",
            "--keep-alive" => {
                keep_alive = value()?
                    .parse()
                    .map_err(|_| "--keep-alive: expected seconds".to_owned())?
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(Options {
        listen: listen
            .parse()
            .map_err(|_| format!("--listen {listen:?}: expected an address"))?,
        redis: if memory { None } else { redis },
        keep_alive: Duration::from_secs(keep_alive),
    })
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("baseline: {message}");
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
            eprintln!("baseline: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    let mut state = AppState {
        topics: Arc::default(),
        next_id: Arc::default(),
        redis: None,
        keep_alive: options.keep_alive,
    };
    if let Some(url) = &options.redis {
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        state.redis = Some(
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("cannot connect to Redis: {e}"))?,
        );
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        pubsub
            .psubscribe("baseline:t:*")
            .await
            .map_err(|e| format!("PSUBSCRIBE failed: {e}"))?;
        let fanout = state.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let channel = message.get_channel_name();
                let Some(topic) = channel.strip_prefix("baseline:t:") else {
                    continue;
                };
                let Ok(data) = message.get_payload::<String>() else {
                    continue;
                };
                fanout.deliver(topic, Arc::from(data));
            }
            eprintln!("baseline: the Redis subscription ended");
        });
    }

    let app = Router::new()
        .route("/events/{topic}", get(events))
        .route("/publish/{topic}", post(publish))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    eprintln!(
        "listening on http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}

async fn events(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.sender(&topic).subscribe();
    let events = stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok((id, data)) => {
                    let event = Event::default().id(id.to_string()).data(&*data);
                    return Some((Ok(event), receiver));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(state.keep_alive))
}

async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(data) = String::from_utf8(body.to_vec()) else {
        return (StatusCode::BAD_REQUEST, "event data must be UTF-8 text\n").into_response();
    };
    let id = match &state.redis {
        Some(conn) => {
            let mut conn = conn.clone();
            let channel = format!("baseline:t:{topic}");
            if let Err(e) = conn.publish::<_, _, i64>(channel, data).await {
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
            }
            state.next_id.load(Ordering::Relaxed)
        }
        None => state.deliver(&topic, Arc::from(data)),
    };
    (
        StatusCode::ACCEPTED,
        [("content-type", "application/json")],
        format!("{{\"id\":\"{id}\"}}"),
    )
        .into_response()
}
