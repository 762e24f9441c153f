//! Demo server processes (`examples/demo.rs`), started on free ports and killed on drop.

use super::redis::free_port;
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The demo binary, built once per test run if `cargo test` did not build it already.
pub(crate) fn demo_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--example", "demo"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo build --example demo failed");
            let exe = std::env::current_exe().unwrap();
            // target/debug/deps/TEST -> target/debug/examples/demo
            exe.parent()
                .and_then(|deps| deps.parent())
                .map(|profile| profile.join("examples").join("demo"))
                .unwrap()
        })
        .clone()
}

/// A running demo process.
pub(crate) struct Demo {
    pub(crate) addr: SocketAddr,
    child: Child,
}

impl Demo {
    /// Starts the demo with `args` (besides `--listen`) and waits for its `listening on` line.
    pub(crate) fn start(args: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(addr, args)
    }

    /// Like [`start`](Self::start), listening on `addr` (say, where a stopped demo listened).
    pub(crate) fn start_at(addr: SocketAddr, args: &[&str]) -> Self {
        let mut child = Command::new(demo_binary())
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.starts_with("listening on http://") {
                    let _ = tx.send(Ok(()));
                    break;
                }
                let _ = tx.send(Err(line));
            }
            // Keep draining so the process never blocks on a full pipe.
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => break,
                Ok(Err(line)) => eprintln!("demo {addr}: {line}"),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the demo on {addr} did not start");
                }
            }
        }
        Self { addr, child }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status, bounded.
    pub(crate) fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.kill();
    }
}
