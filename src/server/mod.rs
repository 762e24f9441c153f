//! A server for the HTTP edge that survives the network (feature `server`): an accept loop
//! that does not spin when the process runs out of descriptors, timeouts for clients that
//! send half a request, go quiet or stop reading, a cap on open connections, and graceful
//! shutdown.
//!
//! Browsers hold event streams open for hours, so an SSE server meets every way a client can
//! misbehave or vanish. [`Server`] serves any tower service (an [`SseLayer`](crate::SseLayer)
//! around your app, an axum `Router`, a warp filter as a service, tonic's routes) on a
//! `TcpListener` with hyper, and takes care of the connection layer.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::ServiceBuilder;
//! use tower_sse::{server::Server, EventBus, SseLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let bus = EventBus::memory();
//! let service = ServiceBuilder::new()
//!     .layer(SseLayer::new(bus.clone()).public())
//!     .service_fn(|_req: Request<hyper::body::Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
//!     });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // End the event streams when shutting down, so their connections can close.
//! let shutdown = async move {
//!     # tokio::time::sleep(Duration::from_millis(10)).await;
//!     # #[cfg(any())]
//!     tokio::signal::ctrl_c().await.ok();
//!     bus.shutdown();
//! };
//! Server::new()
//!     .idle_timeout(Duration::from_secs(120))
//!     .serve(listener, service, shutdown)
//!     .await;
//! # Ok(())
//! # }
//! ```
//!
//! # Behavior
//!
//! | setting | default | what it does |
//! | --- | --- | --- |
//! | [`max_connections`](Server::max_connections) | below the descriptor limit | past it, stop accepting until a connection closes |
//! | [`header_read_timeout`](Server::header_read_timeout) | 30 s | a request head not complete in time closes the connection (HTTP/1) |
//! | [`idle_timeout`](Server::idle_timeout) | 60 s | a connection that moves no byte either way for that long closes |
//! | [`write_timeout`](Server::write_timeout) | 30 s | a write the client accepts no byte of for that long closes the connection |
//! | [`shutdown_timeout`](Server::shutdown_timeout) | 5 s | after shutdown begins, how long open connections may take to finish |
//! | [`http1_only`](Server::http1_only) | HTTP/1.1 and HTTP/2 | serve HTTP/1.1 alone |
//! | [`nodelay`](Server::nodelay) | on | `TCP_NODELAY` on accepted sockets |
//!
//! - **Accepting.** When `accept` fails because the process is out of file descriptors,
//!   memory or socket buffers (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`), the loop backs off
//!   (5 ms doubling up to 200 ms) instead of retrying at once, and logs one warning per
//!   episode, not one per attempt.
//! - **The connection cap** counts connections of every kind: event streams, other requests,
//!   idle keep-alive connections. At the cap the server stops accepting; new clients wait in
//!   the kernel's listen queue until a connection closes, and are not accepted only to be
//!   dropped ([`listen`] binds with a deeper queue than `TcpListener::bind`). The default is the process's `RLIMIT_NOFILE` less a reserve of a tenth (at
//!   least 64 descriptors, at most half) for everything else the process opens (Redis
//!   connections, files): 922 for a limit of 1 024, 192 for 256. Reaching it is logged once,
//!   and again only after the count fell below three quarters of the cap. The stream limit
//!   of [`SseLayer::max_streams`](crate::SseLayer::max_streams) (`503` past it) is separate.
//! - **Timeouts.** The header read timeout is hyper's (HTTP/1, with a timer set); it also
//!   closes a keep-alive connection that does not start its next request in time. The idle
//!   and write timeouts are [`TimeoutIo`]'s, on every connection. An open event stream
//!   writes a keep-alive comment every 15 s by default, so it is never idle: keep the
//!   stream's keep-alive interval below the idle timeout. A client that stops reading a
//!   stream that gets events fills the socket's buffers; its writes stall, and after the
//!   write timeout the connection fails, hyper drops it with everything it buffered, and the
//!   stream's subscription ends.
//! - **Shutdown.** When the `shutdown` future completes, the server stops accepting, asks
//!   every connection to finish (HTTP/1 after its current response, HTTP/2 with `GOAWAY`),
//!   and after the shutdown timeout closes those still open. Event streams end only when the
//!   bus does: call [`EventBus::shutdown`](crate::EventBus::shutdown) in the `shutdown`
//!   future.
//!
//! # In your own accept loop
//!
//! To get the same with a loop of your own: wrap each accepted stream in [`TimeoutIo`]; give
//! hyper's HTTP/1 builder a timer (`hyper_util::rt::TokioTimer`) and a `header_read_timeout`;
//! sleep before retrying when `accept` fails with anything but a per-connection error
//! (`ConnectionAborted`, `ConnectionReset`); and hold a permit of a semaphore sized to your
//! cap for each connection, acquired before `accept`.

mod accept;
mod connection;
mod limit;
mod timeout_io;

use std::{error::Error as StdError, future::Future, io, net::SocketAddr, time::Duration};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::{net::TcpListener, task::JoinSet};
use tower_service::Service;

pub use self::timeout_io::TimeoutIo;
use self::{accept::Acceptor, connection::Protocols};

/// The listen queue [`listen`] asks for.
const BACKLOG: u32 = 1024;

/// Binds a `TcpListener` to `addr` with a listen queue of 1 024 connections (the kernel may
/// cap it, at `net.core.somaxconn` on Linux), where `TcpListener::bind` asks for 128. At the
/// connection cap new clients wait in that queue; past it, their connection attempts are
/// dropped and retried after a second or more.
///
/// # Errors
///
/// When the address cannot be bound.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves a tower service on a `TcpListener`: accept with backoff, a cap on open connections,
/// header read, idle and write timeouts, graceful shutdown. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Server {
    config: Config,
}

/// What a [`Server`] was configured with.
#[derive(Debug, Clone)]
struct Config {
    http1_only: bool,
    http1_max_buf_size: Option<usize>,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    max_connections: Option<Option<usize>>,
    shutdown_timeout: Duration,
    nodelay: bool,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with the defaults of the [module docs](self).
    pub fn new() -> Self {
        Self {
            config: Config {
                http1_only: false,
                http1_max_buf_size: None,
                header_read_timeout: Some(Duration::from_secs(30)),
                idle_timeout: Some(timeout_io::DEFAULT_IDLE_TIMEOUT),
                write_timeout: Some(timeout_io::DEFAULT_WRITE_TIMEOUT),
                max_connections: None,
                shutdown_timeout: Duration::from_secs(5),
                nodelay: true,
            },
        }
    }

    /// Serves HTTP/1.1 only, with no protocol detection before the first request and no
    /// HTTP/2 state per connection. Default: HTTP/1.1 and HTTP/2 (prior knowledge).
    pub fn http1_only(mut self) -> Self {
        self.config.http1_only = true;
        self
    }

    /// The largest HTTP/1 read buffer (hyper's `max_buf_size`, at least 8 192), which bounds
    /// a request head; smaller buffers mean less memory per open stream. Default: hyper's.
    pub fn http1_max_buf_size(mut self, max: usize) -> Self {
        self.config.http1_max_buf_size = Some(max.max(8192));
        self
    }

    /// How long a client may take to send a request head; `None` turns it off.
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.header_read_timeout = timeout.into();
        self
    }

    /// How long a connection may move no bytes either way; `None` turns it off.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.idle_timeout = timeout.into();
        self
    }

    /// How long a write may wait for the client to accept a byte; `None` turns it off.
    pub fn write_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.write_timeout = timeout.into();
        self
    }

    /// The most connections open at once (at least 1); `None` for no cap.
    pub fn max_connections(mut self, max: impl Into<Option<usize>>) -> Self {
        self.config.max_connections = Some(max.into().map(|max| max.max(1)));
        self
    }

    /// How long open connections may take to finish once shutdown begins.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Whether accepted sockets set `TCP_NODELAY`.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Serves `service` on `listener` until `shutdown` completes, then shuts down gracefully
    /// and returns once every connection has closed.
    pub async fn serve<S, B>(
        self,
        listener: TcpListener,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let config = self.config;
        let protocols = Protocols::new(&config);
        let max = config
            .max_connections
            .unwrap_or_else(limit::default_max_connections);
        let graceful = GracefulShutdown::new();
        let mut connections = Connections::new(max);
        let mut acceptor = Acceptor::new(listener);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let room = connections.has_room();
            let stream = tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = connections.closed() => continue,
                (stream, _) = acceptor.accept(), if room => stream,
            };
            if config.nodelay {
                let _ = stream.set_nodelay(true);
            }
            let watcher = graceful.watcher();
            connections.spawn(protocols.serve(stream, &config, service.clone(), watcher));
        }
        drop(acceptor);
        if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::info!(
                open = connections.tasks.len(),
                "closing the connections still open after the shutdown timeout"
            );
        }
        connections.tasks.shutdown().await;
    }
}

/// The open connections, one task each, counted against the cap.
struct Connections {
    tasks: JoinSet<()>,
    max: Option<usize>,
    // Whether reaching the cap was logged, and not yet followed by a fall below 3/4 of it.
    at_cap: bool,
}

impl Connections {
    fn new(max: Option<usize>) -> Self {
        Self {
            tasks: JoinSet::new(),
            max,
            at_cap: false,
        }
    }

    fn spawn(&mut self, connection: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(connection);
    }

    /// Whether another connection may be accepted; logs reaching the cap once per episode.
    fn has_room(&mut self) -> bool {
        let Some(max) = self.max else { return true };
        let open = self.tasks.len();
        if open >= max && !self.at_cap {
            self.at_cap = true;
            tracing::warn!(
                max,
                "connection cap reached; accepting again once one closes"
            );
        } else if self.at_cap && open < max - max / 4 {
            self.at_cap = false;
            tracing::info!(open, max, "below the connection cap again");
        }
        open < max
    }

    /// Completes when a connection's task has ended (and is counted no more).
    async fn closed(&mut self) {
        match self.tasks.join_next().await {
            Some(Err(e)) if e.is_panic() => tracing::error!(error = %e, "a connection panicked"),
            Some(_) => {}
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tokio::{
        io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream},
        time::Instant,
    };

    use super::*;

    /// Answers every request with its body's length, after reading all of it.
    async fn echo_length(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let length = match request.into_body().collect().await {
            Ok(body) => body.to_bytes().len(),
            Err(_) => 0,
        };
        Ok(Response::new(Full::new(Bytes::from(length.to_string()))))
    }

    /// Serves one in-memory connection as `server` would; returns the client's end and the
    /// shutdown signal (dropped, it would say "shut down" at once).
    fn connect(server: &Server) -> (DuplexStream, GracefulShutdown) {
        let (client, io) = duplex(1 << 16);
        let protocols = Protocols::new(&server.config);
        let service = tower::service_fn(echo_length);
        let graceful = GracefulShutdown::new();
        tokio::spawn(protocols.serve(io, &server.config, service, graceful.watcher()));
        (client, graceful)
    }

    /// Reads until the server closes the connection; returns what it sent and when it closed.
    async fn read_to_close(client: &mut DuplexStream) -> (String, Instant) {
        let mut got = Vec::new();
        let hour = Duration::from_secs(3600);
        let read = tokio::time::timeout(hour, client.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "still open after an hour");
        (String::from_utf8_lossy(&got).into_owned(), Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn by_default_half_a_request_head_is_closed_after_30_s() {
        for server in [Server::new(), Server::new().http1_only()] {
            let (mut client, _graceful) = connect(&server);
            let start = Instant::now();
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            let (_, closed) = read_to_close(&mut client).await;
            assert_eq!(closed - start, Duration::from_secs(30), "{server:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn by_default_a_stalled_request_body_is_closed_when_idle_for_60_s() {
        for server in [Server::new(), Server::new().http1_only()] {
            let (mut client, _graceful) = connect(&server);
            client
                .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nsome")
                .await
                .unwrap();
            let last_byte = Instant::now();
            let (answer, closed) = read_to_close(&mut client).await;
            let idle = closed - last_byte;
            assert!(idle >= Duration::from_secs(60), "{server:?}: {idle:?}");
            assert!(idle <= Duration::from_secs(75), "{server:?}: {idle:?}");
            // The handler saw an error reading the body, never a complete one.
            assert!(!answer.ends_with("\r\n\r\n100"), "{answer}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_request_is_answered_and_the_connection_kept() {
        let (mut client, _graceful) = connect(&Server::new().http1_only());
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let mut buf = [0; 512];
        let n = client.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n3"),
            "{answer}"
        );
        // Kept alive until the header read timeout for the next request.
        let answered = Instant::now();
        let (_, closed) = read_to_close(&mut client).await;
        assert_eq!(closed - answered, Duration::from_secs(30));
    }

    #[test]
    fn settings() {
        let server = Server::new()
            .http1_max_buf_size(100)
            .max_connections(0)
            .header_read_timeout(None);
        assert_eq!(server.config.http1_max_buf_size, Some(8192));
        assert_eq!(server.config.max_connections, Some(Some(1)));
        assert_eq!(server.config.header_read_timeout, None);
        assert_eq!(Server::new().config.max_connections, None);
        assert!(Server::new().config.nodelay);
    }
}
