//! A real `redis-server` per test, on a free port of 127.0.0.1, killed when dropped.
//!
//! When `redis-server` is not on `PATH`, [`RedisServer::start`] prints `SKIPPED` and returns
//! `None`, so the tests pass vacuously on a machine without Redis; with
//! `TOWER_SSE_REQUIRE_REDIS=1` (as CI sets) it panics instead.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// How long the server may take to answer `PING` after starting.
const STARTUP: Duration = Duration::from_secs(10);

pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port, or returns `None` (after saying so loudly) when
    /// `redis-server` is not installed and `TOWER_SSE_REQUIRE_REDIS` is not `1`.
    pub(crate) fn start() -> Option<Self> {
        if !redis_server_installed() {
            if std::env::var("TOWER_SSE_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("redis-server not found on PATH, and TOWER_SSE_REQUIRE_REDIS=1");
            }
            eprintln!("SKIPPED: redis-server not found (set TOWER_SSE_REQUIRE_REDIS=1 to fail)");
            return None;
        }
        let port = free_port();
        let mut server = Self { port, child: None };
        server.spawn();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, like a crash) and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new, empty one on the same port.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`pause`](Self::pause).
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    /// Runs one command on a connection of its own and returns the reply, roughly as
    /// `redis-cli` shows it (`OK`, `3`, `(nil)`, array items one per line).
    pub(crate) fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .expect("connect to the test redis-server");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream
            .write_all(request.as_bytes())
            .expect("send a command");
        let mut reader = BufReader::new(stream);
        let mut out = Vec::new();
        read_reply(&mut reader, &mut out);
        out.join("\n")
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        while !self.answers_ping() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused server too.
        self.kill();
    }
}

fn redis_server_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port nobody listened on a moment ago.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("a local address").port()
}

/// Reads one RESP2 reply into lines of text.
fn read_reply(reader: &mut impl BufRead, out: &mut Vec<String>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a reply");
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => out.push(rest.to_owned()),
        "-" => out.push(format!("(error) {rest}")),
        "$" => {
            let Ok(len) = rest.parse::<usize>() else {
                out.push("(nil)".to_owned());
                return;
            };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data).expect("read a bulk string");
            data.truncate(len);
            out.push(String::from_utf8_lossy(&data).into_owned());
        }
        "*" => {
            let count = rest.parse::<i64>().unwrap_or(-1);
            for _ in 0..count.max(0) {
                read_reply(reader, out);
            }
        }
        other => panic!("unexpected reply type {other:?}"),
    }
}
