//! Writing many counts at once. The script calls of a batch go in a pipeline per Redis node:
//! the server, or on a cluster each primary, grouped by the slots `CLUSTER SLOTS` says it
//! serves. Each pipeline starts with `SCRIPT LOAD`, so it never meets an unknown script,
//! holds at most [`MAX_PIPELINE`] calls, and all of them are sent at once. A call that fails
//! within its pipeline (its slot moved meanwhile, say) is made again on its own, routed by its
//! key; a pipeline that fails as a whole fails the batch, which is written again later.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use ::redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
    Pipeline, RedisResult, ScriptInvocation, Value,
};
use tokio::task::JoinSet;

use super::WRITE;
use crate::bus::redis::request::timed;

/// The most script calls in one pipeline.
const MAX_PIPELINE: usize = 1_000;

/// One topic's count to write.
pub(super) struct Call {
    /// The topic's hash of counts and sorted set of deadlines.
    pub(super) keys: [String; 2],
    pub(super) count: usize,
}

/// What every call of a batch carries.
pub(super) struct Args {
    pub(super) instance: String,
    pub(super) ttl_ms: u64,
    pub(super) timeout: Duration,
}

/// How a connection sends the pipelines of a batch.
pub(super) trait Batches: ConnectionLike + Clone + Send + Sync + 'static {
    /// The calls (by index) grouped by the node that serves their keys.
    fn groups(&mut self, calls: &[Call]) -> impl Future<Output = Vec<Vec<usize>>> + Send;

    /// Sends `pipe` of `count` commands to the node serving `key`; one reply per command.
    fn send(
        &mut self,
        pipe: Pipeline,
        count: usize,
        key: &str,
    ) -> impl Future<Output = RedisResult<Vec<Value>>> + Send;
}

/// One server: every call in one group.
impl Batches for MultiplexedConnection {
    async fn groups(&mut self, calls: &[Call]) -> Vec<Vec<usize>> {
        vec![(0..calls.len()).collect()]
    }

    async fn send(&mut self, pipe: Pipeline, count: usize, _key: &str) -> RedisResult<Vec<Value>> {
        self.req_packed_commands(&pipe, 0, count).await
    }
}

/// A cluster: a group per primary.
impl Batches for ClusterConnection {
    async fn groups(&mut self, calls: &[Call]) -> Vec<Vec<usize>> {
        let command = ::redis::cmd("CLUSTER").arg("SLOTS").to_owned();
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        // Without the map, a group per slot: correct, only more requests.
        let owners = match self.route_command(command, routing).await {
            Ok(reply) => parse_slots(reply).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, call) in calls.iter().enumerate() {
            let slot = slot_of(&call.keys[0]);
            let node = owners
                .iter()
                .find(|(first, last, _)| (*first..=*last).contains(&slot))
                .map_or_else(|| format!("slot {slot}"), |(_, _, node)| node.clone());
            groups.entry(node).or_default().push(i);
        }
        groups.into_values().collect()
    }

    async fn send(&mut self, pipe: Pipeline, count: usize, key: &str) -> RedisResult<Vec<Value>> {
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
        self.route_pipeline(pipe, 0, count, route).await
    }
}

/// The cluster slot of `key` (CRC16-XMODEM of its hash tag, or of the key without one, modulo
/// 16 384), as `redis` computes it but as a number.
fn slot_of(key: &str) -> u16 {
    let key = key.as_bytes();
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&b| b == b'}')?;
        Some(&key[open + 1..open + 1 + close]).filter(|tag| !tag.is_empty())
    });
    let mut crc: u16 = 0;
    for &byte in tag.unwrap_or(key) {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

/// The slot ranges of the primaries in a `CLUSTER SLOTS` reply: first slot, last slot, and the
/// primary's address.
fn parse_slots(reply: Value) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut owners = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        let (Some(host), Some(Value::Int(port))) = (primary.first(), primary.get(1)) else {
            return None;
        };
        let host = match host {
            Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let (first, last) = (u16::try_from(*first).ok()?, u16::try_from(*last).ok()?);
        owners.push((first, last, format!("{host}:{port}")));
    }
    Some(owners)
}

/// Writes `calls` through `conn`, a pipeline per group and [`MAX_PIPELINE`] calls.
pub(super) async fn write<C: Batches>(
    mut conn: C,
    calls: Vec<Call>,
    args: Args,
) -> Result<(), String> {
    let groups = conn.groups(&calls).await;
    let (calls, args) = (Arc::new(calls), Arc::new(args));
    let mut pipelines = JoinSet::new();
    for group in groups {
        for chunk in group.chunks(MAX_PIPELINE) {
            let job = write_pipeline(conn.clone(), calls.clone(), chunk.to_vec(), args.clone());
            pipelines.spawn(job);
        }
    }
    let mut outcome = Ok(());
    while let Some(done) = pipelines.join_next().await {
        let done = done.unwrap_or_else(|e| Err(format!("a presence write failed: {e}")));
        if outcome.is_ok() {
            outcome = done;
        }
    }
    outcome
}

/// Writes the calls `chunk` of `calls` in one pipeline; those that fail in it, on their own.
async fn write_pipeline<C: Batches>(
    mut conn: C,
    calls: Arc<Vec<Call>>,
    chunk: Vec<usize>,
    args: Arc<Args>,
) -> Result<(), String> {
    let mut pipe = ::redis::pipe();
    pipe.load_script(&WRITE);
    for &i in &chunk {
        pipe.invoke_script(&invocation(&calls[i], &args));
    }
    let key = &calls[chunk[0]].keys[0];
    let sent = conn.send(pipe, chunk.len() + 1, key);
    let replies = timed("Redis", "writing presence counts", args.timeout, sent).await?;
    if replies.len() != chunk.len() + 1 {
        return Err(format!(
            "{} replies to {} commands",
            replies.len(),
            chunk.len() + 1
        ));
    }
    let failed = chunk
        .iter()
        .zip(&replies[1..])
        .filter(|(_, reply)| matches!(reply, Value::ServerError(_)));
    for (&i, _) in failed {
        let call = invocation(&calls[i], &args);
        let alone = call.invoke_async::<Value>(&mut conn);
        timed("Redis", "writing a presence count", args.timeout, alone).await?;
    }
    Ok(())
}

fn invocation(call: &Call, args: &Args) -> ScriptInvocation<'static> {
    let mut invocation = WRITE.prepare_invoke();
    invocation
        .key(&call.keys[0])
        .key(&call.keys[1])
        .arg(&args.instance)
        .arg(call.count)
        .arg(args.ttl_ms);
    invocation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_redis_computes() {
        use ::redis::cluster_routing::Slot;
        for key in [
            "app:{org:orders}:p",
            "x",
            "{}",
            "a{b}c{d}",
            "{",
            "tower-sse:{demo}:pd",
        ] {
            assert_eq!(Slot::new(slot_of(key)), Some(Slot::for_key(key)), "{key}");
        }
        // The check value of CRC16-XMODEM, below 16 384 already.
        assert_eq!(slot_of("123456789"), 0x31c3);
    }

    #[test]
    fn cluster_slots() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
        ]);
        assert_eq!(
            parse_slots(reply),
            Some(vec![
                (0, 5460, "127.0.0.1:7000".to_owned()),
                (5461, 16383, "127.0.0.1:7001".to_owned())
            ])
        );
        assert_eq!(parse_slots(Value::Int(1)), None);
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(-1), Value::Int(2)])]);
        assert_eq!(parse_slots(bad), None);
    }
}
