//! A real local Redis Cluster per test: three primaries, optionally with replicas, every node a
//! `redis-server` on free ports of 127.0.0.1 with a temporary directory of its own, all killed
//! and cleaned up when dropped.
//!
//! Besides starting the cluster, [`RedisCluster`] can move a hash slot to another primary (the
//! way `redis-cli --cluster reshard` does, so clients see `ASK` and `MOVED` redirections) and
//! crash a primary and wait until one of its replicas has taken over.
//!
//! Like [`RedisServer::start`](super::redis::RedisServer::start), [`RedisCluster::start`] prints
//! `SKIPPED` and returns `None` when `redis-server` or `redis-cli` is not installed, unless
//! `TOWER_SSE_REQUIRE_REDIS=1`, in which case it panics.
//!
//! Everything here blocks; from async tests call it directly or through `spawn_blocking`.

use std::{
    collections::{BTreeSet, HashSet},
    fs::{self, File},
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::redis::free_port;

/// Number of primaries of every cluster.
const PRIMARIES: usize = 3;

/// Number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// How long a node may take to answer `PING` after starting.
const STARTUP: Duration = Duration::from_secs(10);

/// How long the cluster may take to settle: after creation, a slot migration or a failover.
const SETTLE: Duration = Duration::from_secs(30);

/// Pause between two looks at the cluster while waiting for it.
const POLL: Duration = Duration::from_millis(50);

/// How many keys one `CLUSTER GETKEYSINSLOT` + `MIGRATE` round moves.
const MIGRATE_BATCH: usize = 100;

/// Milliseconds `MIGRATE` may take to hand keys to the target.
const MIGRATE_TIMEOUT_MS: &str = "5000";

/// Lines of a node's log shown in panic messages.
const LOG_TAIL: usize = 15;

/// Tells the temporary directories of several clusters of one test process apart.
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// One `redis-server` of the cluster.
struct Node {
    /// Port for clients.
    port: u16,
    /// Directory with the node's `nodes-PORT.conf` and its log.
    dir: PathBuf,
    /// File that receives the node's stdout and stderr.
    log: PathBuf,
    /// Cluster node id (`CLUSTER MYID`), stable for the node's lifetime.
    id: String,
    /// The running process; `None` once killed.
    child: Option<Child>,
}

/// A running Redis Cluster on 127.0.0.1. Dropping it kills every node (SIGKILL) and removes
/// their directories.
///
/// Nodes are addressed by index, in start order; whether a node is a primary or a replica is
/// decided by `redis-cli --cluster create` and can change on failover, so ask
/// [`primaries`](Self::primaries) or [`owner_of_slot`](Self::owner_of_slot).
pub(crate) struct RedisCluster {
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts three primaries with `replicas_per_primary` replicas each and waits until every
    /// node reports `cluster_state:ok`, all nodes agree on the layout and every replica's link
    /// to its primary is up.
    ///
    /// Returns `None` (after saying so loudly) when `redis-server` or `redis-cli` is not
    /// installed and `TOWER_SSE_REQUIRE_REDIS` is not `1`; panics in that case when it is.
    pub(crate) fn start(replicas_per_primary: usize) -> Option<Self> {
        let missing: Vec<&str> = ["redis-server", "redis-cli"]
            .into_iter()
            .filter(|program| !installed(program))
            .collect();
        if !missing.is_empty() {
            let missing = missing.join(" and ");
            if std::env::var("TOWER_SSE_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("{missing} not found on PATH, and TOWER_SSE_REQUIRE_REDIS=1");
            }
            eprintln!("SKIPPED: {missing} not found (set TOWER_SSE_REQUIRE_REDIS=1 to fail)");
            return None;
        }

        let count = PRIMARIES * (1 + replicas_per_primary);
        let root = std::env::temp_dir().join(format!(
            "tower-sse-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut taken = HashSet::new();
        let mut cluster = Self {
            nodes: Vec::with_capacity(count),
        };
        for index in 0..count {
            // Pushed one by one so that a panic below still drops (kills) the earlier nodes.
            let node = Node::spawn(&root.join(format!("node-{index}")), &mut taken);
            cluster.nodes.push(node);
        }
        cluster.create(replicas_per_primary);
        cluster.wait_for("the new cluster to settle", |cluster| {
            let view = cluster.settled()?;
            let primaries = view.iter().filter(|e| e.primary).count();
            let replicas = view.iter().filter(|e| !e.primary).count();
            if primaries == PRIMARIES && replicas == PRIMARIES * replicas_per_primary {
                Ok(())
            } else {
                Err(format!(
                    "{primaries} primaries and {replicas} replicas, expected {PRIMARIES} and {}",
                    PRIMARIES * replicas_per_primary
                ))
            }
        });
        Some(cluster)
    }

    /// `redis://127.0.0.1:PORT/` of every live primary, to seed a cluster client with.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.primaries()
            .into_iter()
            .map(|node| format!("redis://127.0.0.1:{}/", self.nodes[node].port))
            .collect()
    }

    /// Client port of node `node`.
    pub(crate) fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// Runs one command on node `node`, on a connection of its own, and returns the reply
    /// roughly as `redis-cli` shows it (`OK`, `3`, `(nil)`, `(error) MOVED ...`, array items
    /// one per line). Redirections are not followed. Panics when the node cannot be reached.
    pub(crate) fn command(&self, node: usize, args: &[&str]) -> String {
        self.try_command(node, args)
            .unwrap_or_else(|error| panic!("{error}\n{}", self.log_tail(node)))
    }

    /// Index of the primary that owns `slot`, once all live nodes agree on it.
    ///
    /// While a slot is being migrated its owner is still the source. After a primary was
    /// killed and before its replica took over, the answer is the killed node.
    pub(crate) fn owner_of_slot(&self, slot: u16) -> usize {
        assert!(slot < SLOTS, "slot {slot} out of range");
        self.wait_for(
            &format!("the live nodes to agree on the owner of slot {slot}"),
            |c| {
                let mut owner = None;
                for node in c.live() {
                    let view = c.view(node)?;
                    let id = owner_in(&view, slot)
                        .ok_or_else(|| format!("node {node} sees no owner of slot {slot}"))?;
                    let index = c.index_of(id)?;
                    match owner {
                        None => owner = Some(index),
                        Some(seen) if seen == index => {}
                        Some(seen) => {
                            return Err(format!(
                                "node {node} sees node {index} as owner, another node {seen}"
                            ))
                        }
                    }
                }
                owner.ok_or_else(|| "no live node".to_owned())
            },
        )
    }

    /// Computes the slot of `key` with [`key_slot`] and asserts that the cluster agrees
    /// (`CLUSTER KEYSLOT`).
    pub(crate) fn check_slot(&self, key: &str) -> u16 {
        let slot = key_slot(key);
        let node = self.live().next().expect("a live node");
        let reply = self.command(node, &["CLUSTER", "KEYSLOT", key]);
        assert_eq!(reply, slot.to_string(), "slot of key {key:?}");
        slot
    }

    /// Moves `slot` with all its keys from its current owner to the primary `to`, as
    /// `redis-cli --cluster reshard` does: the target is set `IMPORTING`, the source
    /// `MIGRATING`, the keys move in batches with `MIGRATE`, and finally every primary learns
    /// the new owner through `CLUSTER SETSLOT <slot> NODE`. Returns once all live nodes agree.
    ///
    /// Clients may keep using keys of the slot meanwhile; they are redirected with `ASK` for
    /// keys already moved and with `MOVED` afterwards.
    pub(crate) fn migrate_slot(&self, slot: u16, to: usize) {
        let from = self.owner_of_slot(slot);
        if from == to {
            return;
        }
        let primaries = self.primaries();
        assert!(
            primaries.contains(&to),
            "node {to} is not a live primary (primaries: {primaries:?})"
        );
        let slot_arg = slot.to_string();
        let slot_arg = slot_arg.as_str();
        let (source_id, target_id) = (self.nodes[from].id.as_str(), self.nodes[to].id.as_str());
        let target_port = self.nodes[to].port.to_string();

        self.expect_ok(
            to,
            &["CLUSTER", "SETSLOT", slot_arg, "IMPORTING", source_id],
        );
        self.expect_ok(
            from,
            &["CLUSTER", "SETSLOT", slot_arg, "MIGRATING", target_id],
        );

        let batch = MIGRATE_BATCH.to_string();
        loop {
            let keys = self.command(from, &["CLUSTER", "GETKEYSINSLOT", slot_arg, &batch]);
            assert!(
                !keys.starts_with("(error)"),
                "CLUSTER GETKEYSINSLOT {slot} on node {from}: {keys}"
            );
            let keys: Vec<&str> = keys.lines().collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                MIGRATE_TIMEOUT_MS,
                "KEYS",
            ];
            args.extend(&keys);
            let reply = self.command(from, &args);
            // NOKEY: the keys expired or were deleted after GETKEYSINSLOT listed them.
            assert!(
                reply == "OK" || reply == "NOKEY",
                "MIGRATE of {} keys of slot {slot} from node {from} to node {to}: {reply}\n{}",
                keys.len(),
                self.log_tail(from)
            );
        }

        // Target first, so that it serves the slot before the source stops redirecting to it.
        self.expect_ok(to, &["CLUSTER", "SETSLOT", slot_arg, "NODE", target_id]);
        self.expect_ok(from, &["CLUSTER", "SETSLOT", slot_arg, "NODE", target_id]);
        for node in primaries {
            if node != to && node != from {
                self.expect_ok(node, &["CLUSTER", "SETSLOT", slot_arg, "NODE", target_id]);
            }
        }

        let owner = self.owner_of_slot(slot);
        assert_eq!(owner, to, "owner of slot {slot} after migrating it");
    }

    /// Kills primary `node` with SIGKILL, then waits until one of its replicas has been
    /// promoted, every live node reports `cluster_state:ok`, all agree on the layout (so on the
    /// new owner of the killed node's slots) and every live replica's link is up. Returns the
    /// index of the promoted replica.
    pub(crate) fn kill_primary_and_wait_for_failover(&mut self, node: usize) -> usize {
        assert!(self.is_alive(node), "node {node} is not running");
        let view = self
            .view(node)
            .unwrap_or_else(|error| panic!("{error}\n{}", self.log_tail(node)));
        let me = view
            .iter()
            .find(|e| e.id == self.nodes[node].id)
            .expect("a node lists itself in CLUSTER NODES");
        assert!(me.primary, "node {node} is not a primary");
        let slots = me.slots.clone();
        assert!(!slots.is_empty(), "primary {node} owns no slots");
        let replicas: Vec<usize> = view
            .iter()
            .filter(|e| e.primary_id.as_deref() == Some(self.nodes[node].id.as_str()))
            .filter_map(|e| self.index_of(&e.id).ok())
            .filter(|&replica| self.is_alive(replica))
            .collect();
        assert!(
            !replicas.is_empty(),
            "primary {node} has no live replica to promote"
        );

        self.kill(node);

        self.wait_for(
            &format!("a replica {replicas:?} of the killed node {node} to take over"),
            |c| {
                let view = c.settled()?;
                let mut owner = None;
                for &(first, _) in &slots {
                    let id = owner_in(&view, first)
                        .ok_or_else(|| format!("no owner of slot {first}"))?;
                    let index = c.index_of(id)?;
                    if !replicas.contains(&index) {
                        return Err(format!("node {index} owns slot {first}"));
                    }
                    if owner.is_some_and(|seen| seen != index) {
                        return Err("the killed node's slots have several owners".to_owned());
                    }
                    owner = Some(index);
                }
                Ok(owner.expect("the killed node owned slots"))
            },
        )
    }

    /// Freezes every node (SIGSTOP): connections stay open, nothing is answered.
    pub(crate) fn pause_all(&self) {
        self.signal_all("-STOP");
    }

    /// Undoes [`pause_all`](Self::pause_all) and waits until the cluster is settled again.
    pub(crate) fn resume_all(&self) {
        self.signal_all("-CONT");
        self.wait_for("the cluster to settle after a pause", |c| {
            c.settled().map(drop)
        });
    }

    fn signal_all(&self, signal: &str) {
        for node in self.live() {
            let pid = self.nodes[node].child.as_ref().expect("live").id();
            let status = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} {pid}");
        }
    }

    /// Indices of the live nodes that all live nodes see as primaries, in ascending order.
    pub(crate) fn primaries(&self) -> Vec<usize> {
        self.wait_for("the live nodes to agree on the primaries", |c| {
            let mut agreed: Option<Vec<usize>> = None;
            for node in c.live() {
                let mut primaries = Vec::new();
                for entry in c.view(node)?.iter().filter(|e| e.primary && !e.failed) {
                    let index = c.index_of(&entry.id)?;
                    if c.is_alive(index) {
                        primaries.push(index);
                    }
                }
                primaries.sort_unstable();
                match &agreed {
                    None => agreed = Some(primaries),
                    Some(seen) if *seen == primaries => {}
                    Some(seen) => {
                        return Err(format!(
                            "node {node} sees primaries {primaries:?}, another node {seen:?}"
                        ))
                    }
                }
            }
            agreed.ok_or_else(|| "no live node".to_owned())
        })
    }

    /// Joins the started nodes with `redis-cli --cluster create`.
    fn create(&self, replicas_per_primary: usize) {
        let addresses = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port));
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(addresses)
            .args(["--cluster-replicas", &replicas_per_primary.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tails()
        );
    }

    /// Checks that the cluster is at rest and returns the layout all live nodes agree on:
    /// every live node reports `cluster_state:ok` and the same primaries, slots and replicas,
    /// and every live replica's link to its primary is up.
    fn settled(&self) -> Result<Vec<Entry>, String> {
        let mut agreed: Option<(usize, Vec<Entry>, Vec<String>)> = None;
        for node in self.live() {
            let info = self.try_command(node, &["CLUSTER", "INFO"])?;
            if field(&info, "cluster_state") != Some("ok") {
                return Err(format!(
                    "node {node} reports cluster_state:{}",
                    field(&info, "cluster_state").unwrap_or("?")
                ));
            }
            let view = self.view(node)?;
            let layout = layout(&view);
            match &agreed {
                None => agreed = Some((node, view, layout)),
                Some((_, _, seen)) if *seen == layout => {}
                Some((first, _, seen)) => {
                    return Err(format!(
                        "nodes {first} and {node} disagree on the layout: {seen:?} vs {layout:?}"
                    ))
                }
            }
        }
        let (_, view, _) = agreed.ok_or_else(|| "no live node".to_owned())?;
        for entry in view.iter().filter(|e| !e.primary) {
            let replica = self.index_of(&entry.id)?;
            if !self.is_alive(replica) {
                continue;
            }
            let info = self.try_command(replica, &["INFO", "replication"])?;
            if field(&info, "role") != Some("slave") {
                return Err(format!(
                    "replica {replica} reports role {:?}",
                    field(&info, "role")
                ));
            }
            if field(&info, "master_link_status") != Some("up") {
                return Err(format!("replica {replica}'s link to its primary is not up"));
            }
        }
        Ok(view)
    }

    /// Calls `check` every [`POLL`] until it returns `Ok`, and panics with its last error and
    /// the nodes' logs when that takes longer than [`SETTLE`].
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&Self) -> Result<T, String>) -> T {
        let start = Instant::now();
        loop {
            match check(self) {
                Ok(value) => return value,
                Err(error) if start.elapsed() > SETTLE => panic!(
                    "timed out after {SETTLE:?} waiting for {what}; last: {error}\n{}",
                    self.log_tails()
                ),
                Err(_) => thread::sleep(POLL),
            }
        }
    }

    /// `CLUSTER NODES` as seen by `node`.
    fn view(&self, node: usize) -> Result<Vec<Entry>, String> {
        let reply = self.try_command(node, &["CLUSTER", "NODES"])?;
        if reply.starts_with("(error)") {
            return Err(format!("CLUSTER NODES on node {node}: {reply}"));
        }
        Ok(reply.lines().filter_map(Entry::parse).collect())
    }

    /// Like [`command`](Self::command), but failing with a message instead of panicking.
    fn try_command(&self, node: usize, args: &[&str]) -> Result<String, String> {
        if !self.is_alive(node) {
            return Err(format!("node {node} has been killed"));
        }
        let port = self.nodes[node].port;
        request(port, args)
            .map_err(|error| format!("{args:?} on node {node} (port {port}): {error}"))
    }

    /// Runs a command that must answer `OK`.
    fn expect_ok(&self, node: usize, args: &[&str]) {
        let reply = self.command(node, args);
        assert_eq!(reply, "OK", "{args:?} on node {node}");
    }

    /// Index of the node with cluster id `id`.
    fn index_of(&self, id: &str) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| format!("unknown node id {id}"))
    }

    fn is_alive(&self, node: usize) -> bool {
        self.nodes[node].child.is_some()
    }

    /// Indices of the nodes not killed.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&node| self.is_alive(node))
    }

    /// SIGKILLs node `node` and waits until it is gone.
    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The end of node `node`'s log, for panic messages.
    fn log_tail(&self, node: usize) -> String {
        let n = &self.nodes[node];
        let state = if self.is_alive(node) {
            "running"
        } else {
            "killed"
        };
        format!(
            "--- node {node} (port {}, {state}) {} ---\n{}",
            n.port,
            n.log.display(),
            tail(&n.log)
        )
    }

    /// [`log_tail`](Self::log_tail) of every node.
    fn log_tails(&self) -> String {
        (0..self.nodes.len())
            .map(|node| self.log_tail(node))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
            let _ = fs::remove_dir_all(&self.nodes[node].dir);
        }
        if let Some(root) = self.nodes.first().and_then(|n| n.dir.parent()) {
            let _ = fs::remove_dir(root);
        }
    }
}

impl Node {
    /// Starts a cluster-enabled `redis-server` in a fresh `dir` on two free ports (clients and
    /// cluster bus) not in `taken`, and waits until it answers `PING`. Tries other ports when
    /// another process grabbed one of them in the meantime.
    fn spawn(dir: &Path, taken: &mut HashSet<u16>) -> Self {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).expect("create a node directory");
        let mut attempt = 1;
        loop {
            let port = fresh_port(taken);
            let bus_port = fresh_port(taken);
            let log = dir.join(format!("redis-{port}.log"));
            let out = File::create(&log).expect("create a node log");
            let err = out.try_clone().expect("clone the log handle");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "1000"])
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--repl-diskless-sync", "yes"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--dir", &dir.to_string_lossy()])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("start redis-server");
            let deadline = Instant::now() + STARTUP;
            loop {
                if request(port, &["PING"]).is_ok_and(|reply| reply == "PONG") {
                    let id = request(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID");
                    return Self {
                        port,
                        dir: dir.to_owned(),
                        log,
                        id,
                        child: Some(child),
                    };
                }
                if let Some(status) = child.try_wait().expect("poll redis-server") {
                    let tail = tail(&log);
                    if tail.contains("Address already in use") && attempt < 3 {
                        break;
                    }
                    panic!("redis-server on port {port} exited: {status}\n{tail}");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "redis-server on port {port} did not answer PING within {STARTUP:?}\n{}",
                        tail(&log)
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
            attempt += 1;
        }
    }
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@cport> <flags> <primary-id> <ping-sent> <pong-recv> <epoch> <link> <slots...>`.
#[derive(Debug)]
struct Entry {
    id: String,
    /// Flagged `master` (else `slave`).
    primary: bool,
    /// Flagged `fail` (not just `fail?`).
    failed: bool,
    /// The primary of a replica.
    primary_id: Option<String>,
    /// Owned slot ranges, inclusive; slots being imported or migrated are left out.
    slots: Vec<(u16, u16)>,
}

impl Entry {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        let slots = fields[8..]
            .iter()
            .filter(|range| !range.starts_with('['))
            .filter_map(|range| match range.split_once('-') {
                Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                None => range.parse().ok().map(|slot| (slot, slot)),
            })
            .collect();
        Some(Self {
            id: fields[0].to_owned(),
            primary: flags.contains(&"master"),
            failed: flags.contains(&"fail"),
            primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        })
    }
}

/// The id of the primary that owns `slot` in `view`.
fn owner_in(view: &[Entry], slot: u16) -> Option<&str> {
    view.iter()
        .filter(|e| e.primary)
        .find(|e| e.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|e| e.id.as_str())
}

/// What two nodes must agree on: who is a primary with which slots and who replicates whom.
/// Flags such as `fail?` are left out, as they are each node's own opinion.
fn layout(view: &[Entry]) -> Vec<String> {
    let lines: BTreeSet<String> = view
        .iter()
        .map(|e| match &e.primary_id {
            Some(primary) if !e.primary => format!("{} replicates {primary}", e.id),
            _ => {
                let mut slots = e.slots.clone();
                slots.sort_unstable();
                format!("{} primary {slots:?}", e.id)
            }
        })
        .collect();
    lines.into_iter().collect()
}

/// The hash slot of `key`: CRC16 (XMODEM) modulo 16384 of the key, or of its hash tag, which
/// is what lies between the first `{` and the first `}` after it, when that is not empty.
pub(crate) fn key_slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let mut hashed = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                hashed = &rest[..close];
            }
        }
    }
    crc16(hashed) % SLOTS
}

/// CRC16/XMODEM: polynomial 0x1021, initial value 0, no reflection.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Value of `name` in `INFO`-style text (`name:value` lines).
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// A port nobody listened on a moment ago and not handed out before.
fn fresh_port(taken: &mut HashSet<u16>) -> u16 {
    loop {
        let port = free_port();
        if taken.insert(port) {
            return port;
        }
    }
}

/// Whether `program --version` runs.
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last [`LOG_TAIL`] lines of a log file.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}

/// Sends one command to 127.0.0.1:`port` on a new connection and reads the reply as
/// [`RedisCluster::command`] shows it.
fn request(port: u16, args: &[&str]) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request)?;
    let mut reader = BufReader::new(stream);
    let mut out = Vec::new();
    read_reply(&mut reader, &mut out)?;
    Ok(out.join("\n"))
}

/// Reads one RESP2 reply into lines of text; unlike a panicking reader, a node dying
/// mid-reply surfaces as an error the polling loops can wait out.
fn read_reply(reader: &mut impl BufRead, out: &mut Vec<String>) -> io::Result<()> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let Some(kind) = line.chars().next() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "empty reply line",
        ));
    };
    let rest = &line[1..];
    match kind {
        '+' | ':' => out.push(rest.to_owned()),
        '-' => out.push(format!("(error) {rest}")),
        '$' => match rest.parse::<usize>() {
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                out.push(String::from_utf8_lossy(&data).into_owned());
            }
            Err(_) => out.push("(nil)".to_owned()),
        },
        '*' => {
            for _ in 0..rest.parse::<i64>().unwrap_or(-1).max(0) {
                read_reply(reader, out)?;
            }
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected reply type {other:?}"),
            ))
        }
    }
    Ok(())
}
