//! Server instances the load generator starts itself (`--spawn-demo`, `--spawn-baseline`) on
//! free ports, killed when dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::options::{parse_target, Options};

/// The running instances of one kind of server.
pub(crate) struct Servers {
    children: Vec<Child>,
    pub(crate) addrs: Vec<SocketAddr>,
}

impl Servers {
    /// Starts `--instances` copies of the server at `path` and waits until each listens.
    pub(crate) fn spawn(options: &Options, kind: &str, path: &str) -> Result<Self, String> {
        let mut servers = Servers {
            children: Vec::new(),
            addrs: Vec::new(),
        };
        for i in 0..options.instances.max(1) {
            let mut command = Command::new(path);
            command.args(["--listen", "127.0.0.1:0"]);
            if let Some(backend) = &options.backend {
                command.args(["--backend", backend]);
            }
            if let Some(redis) = &options.redis {
                command.args(["--redis", redis]);
            }
            command
                .args(&options.server_args)
                .envs(options.server_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start {path}: {e}"))?;
            let stderr = child.stderr.take().expect("piped");
            servers.children.push(child);
            let (tx, rx) = std::sync::mpsc::channel();
            let name = format!("{kind}{i}");
            let verbose = options.verbose;
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("listening on http://") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Ok(addr.trim().to_owned()));
                            continue;
                        }
                    }
                    if verbose || tx.is_some() {
                        eprintln!("[{name}] {line}");
                    }
                    if let Some(sender) = &tx {
                        let _ = sender.send(Err(line));
                    }
                }
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let addr = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Ok(addr)) => break addr,
                    Ok(Err(_line)) => continue,
                    Err(_) => return Err(format!("{kind}{i} did not print `listening on`")),
                }
            };
            servers.addrs.push(parse_target(&addr)?);
        }
        Ok(servers)
    }

    /// The instances' process ids.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}
