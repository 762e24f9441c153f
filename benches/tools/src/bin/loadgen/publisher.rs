//! Publishers: `POST /publish/{topic}` over kept-alive connections, one request at a time each.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::mpsc};

use crate::now_us;

/// The sending half of a publishing connection.
pub(crate) type PublishConn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens one kept-alive connection for publishing.
pub(crate) async fn publish_conn(target: SocketAddr) -> Result<PublishConn, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One event to publish.
pub(crate) struct PublishJob {
    pub(crate) seq: usize,
    pub(crate) topic: Arc<str>,
}

#[derive(Default)]
/// What the publishers did, all together.
pub(crate) struct PublishStats {
    pub(crate) ok: Vec<bool>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) latencies_us: Vec<u32>,
}

/// One publishing connection: sends its jobs one after the other and records each outcome.
pub(crate) async fn publisher(
    target: SocketAddr,
    mut sender: PublishConn,
    mut jobs: mpsc::UnboundedReceiver<PublishJob>,
    payload: usize,
    stats: Arc<Mutex<PublishStats>>,
) {
    while let Some(job) = jobs.recv().await {
        let sent = now_us();
        let mut data = format!("seq={} t={sent}", job.seq);
        if data.len() < payload {
            data.push(' ');
            while data.len() < payload {
                data.push('x');
            }
        }
        let request = Request::post(format!("/publish/{}", job.topic))
            .header(header::HOST, target.to_string())
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(data)))
            .expect("a valid request");
        let outcome = async {
            sender.ready().await.map_err(|e| format!("{e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{e}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{e}"))?
                .to_bytes();
            // The demo answers 202; Nchan answers 201 when the channel has subscribers.
            if status == StatusCode::ACCEPTED || status == StatusCode::CREATED {
                Ok(())
            } else {
                Err(format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&body)
                ))
            }
        }
        .await;
        let took = now_us().saturating_sub(sent);
        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                s.ok[job.seq] = true;
                s.latencies_us.push(took.min(u32::MAX as u64) as u32);
            }
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert(e);
            }
        }
    }
}
