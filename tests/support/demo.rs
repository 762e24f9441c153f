//! Demo server processes (`examples/demo/`), started on free ports and killed on drop.

use super::redis::free_port;
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
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

/// `CLK_TCK`, the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    })
}

/// A running demo process.
pub(crate) struct Demo {
    pub(crate) addr: SocketAddr,
    child: Child,
    /// What the demo wrote to stderr after its `listening on` line (the first 10 000 lines).
    log: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    /// Starts the demo with `args` (besides `--listen`) and waits for its `listening on` line.
    pub(crate) fn start(args: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_at(addr, args)
    }

    /// Like [`start`](Self::start), listening on `addr` (say, where a stopped demo listened).
    pub(crate) fn start_at(addr: SocketAddr, args: &[&str]) -> Self {
        let mut command = Command::new(demo_binary());
        command.arg("--listen").arg(addr.to_string()).args(args);
        Self::spawn(command, addr)
    }

    /// Starts the demo like [`start`](Self::start), through `sh -c 'ulimit -n LIMIT; exec ...'`
    /// so that it can open at most `limit` file descriptors. Its pid is the demo's own.
    pub(crate) fn start_with_fd_limit(limit: u32, args: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(demo_binary())
            .arg("--listen")
            .arg(addr.to_string())
            .args(args);
        Self::spawn(command, addr)
    }

    fn spawn(mut command: Command, addr: SocketAddr) -> Self {
        let mut child = command
            .env_remove("REDIS_URL")
            .env_remove("LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
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
            for line in lines.map_while(Result::ok) {
                let mut log = keep.lock().unwrap();
                if log.len() < 10_000 {
                    log.push(line);
                }
            }
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
        Self { addr, child, log }
    }

    /// The lines the demo wrote to stderr since it started listening.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time the process has used so far, user and system (Linux: `/proc/PID/stat`).
    pub(crate) fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the command name, which is in parentheses and may hold spaces:
        // utime and stime are the 14th and 15th of all.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<u64> = after_name
            .split(' ')
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        Duration::from_secs_f64((fields[0] + fields[1]) as f64 / clock_ticks_per_second())
    }

    /// How many sockets the process has open (Linux: `/proc/PID/fd`).
    pub(crate) fn open_sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
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
