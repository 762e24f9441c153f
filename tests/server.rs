//! The connection layer over real sockets on 127.0.0.1: the demo out of file descriptors, with
//! clients that send half a request, go quiet or stop reading, and `tower_sse::server::Server`
//! itself at its connection cap and shutting down.

mod support;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::{
    demo::Demo,
    http::{request, SseClient, WAIT},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::timeout,
};
use tower::ServiceBuilder;
use tower_sse::{server::Server, Event, EventBus, SseLayer};

/// Reads from `stream` until the peer closes it (or resets it); `None` if it is still open
/// after `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    timeout(wait, read_all).await.ok().map(|()| got)
}

async fn healthz(addr: SocketAddr) -> u16 {
    request(addr, "GET", "/healthz", "").await.0.as_u16()
}

/// Out of descriptors with 400 connections open, the demo neither spins nor stays deaf: with
/// its default cap (below the limit) it stops accepting; with a cap above the limit, `accept`
/// fails with `EMFILE` and the loop backs off, saying so once.
#[tokio::test]
async fn out_of_descriptors_the_demo_does_not_spin_and_recovers() {
    for args in [&[][..], &["--max-open-connections", "1000"][..]] {
        let demo = Demo::start_with_fd_limit(256, args);
        let mut clients = Vec::new();
        for _ in 0..400 {
            clients.push(TcpStream::connect(demo.addr).await.unwrap());
        }
        // Let the demo accept what it will.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = demo.cpu_time();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let used = demo.cpu_time() - before;
        assert!(
            used < Duration::from_millis(600),
            "{args:?}: {used:?} of CPU in 3 s"
        );

        drop(clients);
        let closed = Instant::now();
        let status = timeout(Duration::from_secs(1), healthz(demo.addr)).await;
        assert_eq!(status.ok(), Some(200), "{args:?}: {:?}", closed.elapsed());

        let backing_off = demo
            .log()
            .iter()
            .filter(|line| line.contains("cannot accept connections"))
            .count();
        let expected = if args.is_empty() { 0 } else { 1 };
        assert_eq!(backing_off, expected, "{args:?}: {:#?}", demo.log());
    }
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_request_head_is_closed() {
    let demo = Demo::start(&["--header-read-timeout", "1"]);
    let mut client = TcpStream::connect(demo.addr).await.unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut client, Duration::from_secs(35)).await;
    assert!(got.is_some(), "still open after 35 s");
    // Other clients are served meanwhile and after.
    assert_eq!(healthz(demo.addr).await, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_an_open_stream_is_not() {
    let demo = Demo::start(&["--idle-timeout", "2", "--keep-alive", "1"]);
    let mut stream = SseClient::connect(demo.addr, "/events/quiet", None).await;
    assert_eq!(stream.status, 200);
    assert!(stream.next_event().await.unwrap().is_status());

    let mut idle = TcpStream::connect(demo.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0; 512];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let kept = Instant::now();
    let rest = closed_within(&mut idle, WAIT).await;
    assert_eq!(rest.as_deref(), Some(&[][..]), "still open after {WAIT:?}");
    assert!(
        kept.elapsed() >= Duration::from_secs(2),
        "{:?}",
        kept.elapsed()
    );

    // Three idle timeouts later the stream, which writes a keep-alive comment every second,
    // is still open and delivers.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(6) {
        let frame = stream.next_frame().await.expect("the stream is open");
        assert!(frame.data.is_none(), "{frame:?}");
    }
    let (status, _, _) = request(demo.addr, "POST", "/publish/quiet", "still here").await;
    assert_eq!(status, 202);
    assert_eq!(stream.next_event().await.unwrap().data(), "still here");
}

/// Publishes `data` on `topic` over one kept-alive connection.
struct Publisher {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Publisher {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self { sender, addr }
    }

    async fn publish(&mut self, topic: &str, data: Bytes) -> u16 {
        let request = Request::post(format!("/publish/{topic}"))
            .header("host", self.addr.to_string())
            .body(Full::new(data))
            .unwrap();
        let response = timeout(WAIT, self.sender.send_request(request))
            .await
            .expect("an answer in time")
            .unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

#[tokio::test]
#[cfg(target_os = "linux")]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let demo = Demo::start(&["--write-timeout", "1"]);
    let listening = demo.open_sockets();

    // A client with a small receive buffer that asks for a stream and never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(demo.addr).await.unwrap();
    stalled
        .write_all(b"GET /events/firehose HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut publisher = Publisher::connect(demo.addr).await;
    let open = Instant::now();
    while !metrics(demo.addr).await.contains("sse_streams_open 1") {
        assert!(open.elapsed() < WAIT, "the stream did not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connections of the requests above close, the stream's and the publisher's stay.
    while demo.open_sockets() > listening + 2 {
        assert!(open.elapsed() < WAIT, "{} sockets", demo.open_sockets());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 8 MiB of events: more than the kernel buffers both ways hold, far less than the
    // stream's queue of 1 024 events.
    let event = Bytes::from(vec![b'x'; 64 * 1024]);
    for _ in 0..128 {
        assert_eq!(publisher.publish("firehose", event.clone()).await, 202);
    }
    let stalled_at = Instant::now();
    while demo.open_sockets() > listening + 1 {
        assert!(
            stalled_at.elapsed() < Duration::from_secs(20),
            "the stalled connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The publisher's connection is untouched, and the stream is gone.
    assert_eq!(
        publisher.publish("firehose", Bytes::from("more")).await,
        202
    );
    assert!(metrics(demo.addr).await.contains("sse_streams_open 0"));
    drop(stalled);
}

async fn metrics(addr: SocketAddr) -> String {
    request(addr, "GET", "/metrics", "").await.2
}

type Stop = oneshot::Sender<()>;

/// `Server` with `configure` applied, serving `SseLayer` around a handler that answers
/// `/hang` never and everything else with `ok`, in a task; the bus shuts down with it.
async fn serve(
    configure: impl FnOnce(Server) -> Server,
) -> (SocketAddr, EventBus, Stop, JoinHandle<()>) {
    let bus = EventBus::memory();
    let service = ServiceBuilder::new()
        .layer(SseLayer::new(bus.clone()).public())
        .service_fn(|req: Request<Incoming>| async move {
            if req.uri().path() == "/hang" {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    let shutdown = {
        let bus = bus.clone();
        async move {
            let _ = stopped.await;
            bus.shutdown();
        }
    };
    let server = configure(Server::new());
    let task = tokio::spawn(server.serve(listener, service, shutdown));
    (addr, bus, stop, task)
}

async fn answered(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0; 256];
    matches!(timeout(wait, stream.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test]
async fn at_the_cap_the_server_accepts_again_once_a_connection_closes() {
    let (addr, _bus, _stop, _task) = serve(|s| s.max_connections(2)).await;
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    // The third connects (the kernel queues it) but is not accepted...
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(!answered(&mut third, Duration::from_millis(500)).await);
    // ...until one of the others closes; nothing was accepted only to be dropped.
    drop(first);
    assert!(answered(&mut third, WAIT).await);
}

#[tokio::test]
async fn shutdown_ends_streams_and_bounds_the_rest() {
    let (addr, _bus, stop, task) = serve(|s| s.shutdown_timeout(Duration::from_secs(1))).await;
    let mut stream = SseClient::connect(addr, "/events/t", None).await;
    assert!(stream.next_event().await.unwrap().is_status());
    let mut hanging = TcpStream::connect(addr).await.unwrap();
    hanging
        .write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    stop.send(()).unwrap();
    // The stream ends (the bus shut down), the server stops accepting, and the request that
    // never finishes is cut off once the shutdown timeout is over.
    while stream.next_frame().await.is_some() {}
    finishes(task).await;
    assert!(closed_within(&mut hanging, WAIT).await.is_some());
    assert!(TcpStream::connect(addr).await.is_err());
}

async fn finishes(task: impl Future<Output = Result<(), tokio::task::JoinError>>) {
    timeout(WAIT, task)
        .await
        .expect("the server returns")
        .expect("and does not panic");
}

#[tokio::test]
async fn the_server_publishes_through_the_bus_it_serves() {
    let (addr, bus, stop, task) = serve(|s| s.http1_only()).await;
    let mut stream = SseClient::connect(addr, "/events/t", None).await;
    assert!(stream.next_event().await.unwrap().is_status());
    bus.publish("t", Event::new("hello")).await.unwrap();
    assert_eq!(stream.next_event().await.unwrap().data(), "hello");
    stop.send(()).unwrap();
    finishes(task).await;
}
