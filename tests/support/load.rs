//! Heavy-load helpers: a publisher over one kept-alive connection, a client socket that never
//! reads, and a process's memory figures.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::http::WAIT;

pub(crate) const MIB: u64 = 1024 * 1024;

/// Publishes over one kept-alive connection, one request after the other.
pub(crate) struct Publisher {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Publisher {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { sender, addr }
    }

    /// `POST /publish/{topic}` with `data`; the answer's status.
    pub(crate) async fn publish(&mut self, topic: &str, data: Bytes) -> StatusCode {
        self.sender.ready().await.unwrap();
        let req = Request::post(format!("/publish/{topic}"))
            .header("host", self.addr.to_string())
            .body(Full::new(data))
            .unwrap();
        let response = tokio::time::timeout(WAIT, self.sender.send_request(req))
            .await
            .expect("an answer in time")
            .unwrap();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        status
    }
}

/// A client that opens `path` with a receive buffer of `recv_buffer` bytes and never reads.
pub(crate) async fn stalled_client(addr: SocketAddr, path: &str, recv_buffer: u32) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(recv_buffer).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// A figure of `/proc/PID/status`, in bytes.
pub(crate) fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Open TCP connections of process `pid` whose peer is `peer` (from /proc/PID/net/tcp and the
/// process's socket inodes).
pub(crate) fn connections_to(pid: u32, peer: SocketAddr) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(match peer.ip() {
            std::net::IpAddr::V4(ip) => ip.octets(),
            std::net::IpAddr::V6(_) => panic!("IPv4 only"),
        }),
        peer.port()
    );
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<_> = line.split_whitespace().collect();
            fields.get(2) == Some(&want.as_str()) && inodes.contains(fields[9])
        })
        .count()
}
