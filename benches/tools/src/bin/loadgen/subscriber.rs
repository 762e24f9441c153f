//! Subscribers: one HTTP/1.1 connection each, reading `GET /events/{topic}`.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::{watch, Semaphore},
    time::Instant,
};

use crate::{
    now_us,
    parser::{Parser, SubResult},
};

/// What the subscribers share with the main task.
pub(crate) struct Shared {
    /// Subscribers that have their stream open.
    pub(crate) ready: AtomicUsize,
    /// Distinct events received, all subscribers together.
    pub(crate) delivered: AtomicU64,
    /// When the last event was received (µs since the epoch).
    pub(crate) last_receive: AtomicU64,
}

/// How one subscriber is set up.
pub(crate) struct SubPlan {
    pub(crate) topic: usize,
    pub(crate) topic_name: String,
    pub(crate) target: SocketAddr,
    /// In the resume scenario: the instance to reconnect to, and the time to drop the connection
    /// (known once publishing starts).
    pub(crate) resume: Option<(SocketAddr, watch::Receiver<Option<Instant>>)>,
    pub(crate) pause: Duration,
    pub(crate) events: usize,
}

type Conn = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// Opens a stream: connects, sends the request and waits for a `200` head.
async fn open_stream(
    target: SocketAddr,
    topic: &str,
    last_event_id: Option<&[u8]>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        Conn,
        hyper::body::Incoming,
    ),
    String,
> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, mut conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut request = Request::get(format!("/events/{topic}"))
        .header(header::HOST, target.to_string())
        .header(header::ACCEPT, "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let request = request.body(Empty::new()).expect("a valid request");
    let response = {
        let send = sender.send_request(request);
        tokio::pin!(send);
        tokio::select! {
            r = &mut send => r.map_err(|e| format!("request: {e}"))?,
            r = &mut conn => return Err(format!("connection ended early: {r:?}")),
        }
    };
    if response.status() != StatusCode::OK {
        return Err(format!("GET /events/{topic}: status {}", response.status()));
    }
    Ok((sender, conn, response.into_body()))
}

/// One subscriber: opens its stream, reads it until told to stop and, in the resume scenario,
/// reconnects once with the last id it saw.
pub(crate) async fn subscriber(
    plan: SubPlan,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut r = SubResult {
        topic: plan.topic,
        seen: vec![0; plan.events.div_ceil(64)],
        ..SubResult::default()
    };
    let permit = gate.clone().acquire_owned().await;
    let mut opened = open_stream(plan.target, &plan.topic_name, None).await;
    drop(permit);
    let mut parser = Parser::default();
    let mut resume = plan.resume;
    let mut counted_ready = false;
    loop {
        let (sender, mut conn, mut body) = match opened {
            Ok(parts) => parts,
            Err(e) => {
                r.error = Some(e);
                if !counted_ready {
                    shared.ready.fetch_add(1, Ordering::AcqRel);
                }
                return r;
            }
        };
        r.connected = true;
        if !counted_ready {
            counted_ready = true;
            shared.ready.fetch_add(1, Ordering::AcqRel);
        }
        let mut conn_done = false;
        let outcome = {
            let disconnect = disconnect_time(resume.as_mut().map(|(_, at)| at));
            tokio::pin!(disconnect);
            loop {
                tokio::select! {
                    biased;
                    frame = body.frame() => match frame {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                let now = now_us();
                                let fresh = parser.feed(&data, now, &mut r);
                                if fresh > 0 {
                                    shared.delivered.fetch_add(fresh, Ordering::Relaxed);
                                    shared.last_receive.fetch_max(now, Ordering::Relaxed);
                                }
                            }
                        }
                        Some(Err(e)) => break Some(format!("stream: {e}")),
                        None => break Some("stream ended".to_owned()),
                    },
                    _ = &mut conn, if !conn_done => conn_done = true,
                    _ = stop.changed() => break None,
                    () = &mut disconnect => break Some(String::new()),
                }
            }
        };
        drop(body);
        drop(sender);
        drop(conn);
        match outcome {
            None => return r,
            Some(reason) if !reason.is_empty() => {
                r.error = Some(reason);
                return r;
            }
            Some(_) => {}
        }
        // The resume scenario: reconnect to the next instance with the last id seen.
        let (target, _) = resume.take().expect("only with a disconnection time");
        tokio::time::sleep(plan.pause).await;
        parser.reconnected();
        r.reconnects += 1;
        let id = parser.last_id().to_vec();
        let permit = gate.clone().acquire_owned().await;
        opened = open_stream(
            target,
            &plan.topic_name,
            (!id.is_empty()).then_some(&id[..]),
        )
        .await;
        drop(permit);
    }
}

/// Waits for the disconnection time to be set, then until it; never without one.
async fn disconnect_time(at: Option<&mut watch::Receiver<Option<Instant>>>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let when = loop {
        if let Some(when) = *at.borrow_and_update() {
            break when;
        }
        if at.changed().await.is_err() {
            return std::future::pending().await;
        }
    };
    tokio::time::sleep_until(when).await;
}
