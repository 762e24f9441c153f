//! Real HTTP on 127.0.0.1 for the tests: a server around `SseLayer` and a streaming client.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower::ServiceBuilder;
use tower_sse::{EventBus, SseLayer};

/// How long any single wait in a test may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1:0: `layer` around an inner service that answers
/// `inner {METHOD} {PATH}; bus: {yes|no}` (whether the bus was in the request's extensions).
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn serve(layer: SseLayer) -> TestServer {
    let service =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|req: Request<Incoming>| async move {
                let has_bus = req.extensions().get::<EventBus>().is_some();
                let body = format!(
                    "inner {} {}; bus: {}",
                    req.method(),
                    req.uri().path(),
                    if has_bus { "yes" } else { "no" }
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestServer { addr, task }
}

/// Sends one request on a new connection and reads the whole answer.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    request_with(addr, method, path, &[], body).await
}

/// Like [`request`], with extra request headers.
pub(crate) async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let response = send(addr, method, path, headers, body).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("response head in time")
        .unwrap()
}

/// One frame of an event stream, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) event: Option<String>,
    pub(crate) data: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) retry: Option<u64>,
    pub(crate) comments: Vec<String>,
}

impl Frame {
    pub(crate) fn data(&self) -> &str {
        self.data.as_deref().unwrap_or("")
    }

    pub(crate) fn is_status(&self) -> bool {
        self.event.as_deref() == Some(tower_sse::STATUS_EVENT)
    }
}

/// A client reading an event stream frame by frame.
pub(crate) struct SseClient {
    pub(crate) status: StatusCode,
    pub(crate) headers: http::HeaderMap,
    body: Incoming,
    buf: BytesMut,
}

impl SseClient {
    /// Opens `path`; returns once the response head has arrived.
    pub(crate) async fn connect(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Self {
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| vec![("last-event-id", id)])
            .unwrap_or_default();
        let response = send(addr, "GET", path, &headers, "").await;
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.into_body(),
            buf: BytesMut::new(),
        }
    }

    /// Opens `path` with extra request headers; returns once the response head has arrived.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Self {
        let response = send(addr, "GET", path, headers, "").await;
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.into_body(),
            buf: BytesMut::new(),
        }
    }

    /// The next frame, or `None` when the stream ended.
    pub(crate) async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.read_frame())
            .await
            .expect("a frame in time")
    }

    /// The next frame that is not a keep-alive.
    pub(crate) async fn next_event(&mut self) -> Option<Frame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.data.is_some() || frame.event.is_some() || frame.id.is_some() {
                return Some(frame);
            }
        }
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        // Where the search for the frame's end resumes: large frames arrive in many pieces.
        let mut from = 0;
        loop {
            if let Some(end) = find(&self.buf[from..], b"\n\n").map(|i| i + from) {
                let raw = self.buf.split_to(end + 2);
                return Some(parse(&String::from_utf8_lossy(&raw[..end])));
            }
            from = self.buf.len().saturating_sub(1);
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => return None,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one frame per the event stream format (lines are LF-terminated here).
pub(crate) fn parse(raw: &str) -> Frame {
    let mut frame = Frame::default();
    for line in raw.split('\n') {
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "" => frame.comments.push(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "id" => frame.id = Some(value.to_owned()),
            "retry" => frame.retry = value.parse().ok(),
            "data" => match &mut frame.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => frame.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    frame
}
