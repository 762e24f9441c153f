//! The requests the cluster backend makes besides publishing's script: a topic's counter, a new
//! epoch for a topic, pages of a topic's stream, `WAIT` on the topic's primary, and `CLIENT
//! INFO` on every primary.

use std::future::Future;

use ::redis::{
    cluster_async::ClusterConnection,
    cluster_routing::{
        MultipleNodeRoutingInfo, Route as NodeRoute, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
    },
    Cmd, RedisResult, Value,
};

use super::Core;
use crate::bus::{
    redis::{
        entries::{read_page, Numbering, Page, Read, StreamKeys},
        publish::Route,
        replay::Pages,
        request::{millis, timed},
        scripts,
        state::{self, State},
    },
    Topic,
};

impl Core {
    /// Reads a topic's epoch (starting one if it has none) and last sequence number.
    pub(super) async fn read_state(&self, topic: &Topic) -> Result<State, String> {
        let mut conn = self.conn.clone();
        let key = self.names.state(topic);
        state::read(&mut conn, &key, Some(self.idle_ttl), self.request_timeout).await
    }

    /// Replaces the topic's epoch `stale` with a new one (`lua/new_epoch.lua`).
    pub(super) async fn start_epoch(&self, topic: &Topic, stale: u32) -> Result<State, String> {
        let fresh = std::iter::repeat_with(crate::random::u32)
            .find(|&e| e != stale)
            .expect("an endless iterator");
        let key = self.names.state(topic);
        let mut invocation = scripts::NEW_EPOCH.prepare_invoke();
        invocation
            .key(&key)
            .arg(format!("{stale:08x}"))
            .arg(format!("{fresh:08x}"))
            .arg(millis(self.idle_ttl));
        let mut conn = self.conn.clone();
        let (epoch, seq): (String, String) = self
            .request(
                "starting a topic's epoch",
                invocation.invoke_async(&mut conn),
            )
            .await?;
        State::parse(&epoch, &seq)
            .ok_or_else(|| format!("unexpected content in the Redis key {key}"))
    }

    /// How many sharded channels this instance's connections to the primaries are subscribed
    /// to (`ssub` of `CLIENT INFO`, summed); fails unless every primary answers.
    pub(super) async fn subscriptions(&self) -> Result<usize, String> {
        let mut conn = self.conn.clone();
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let mut command = ::redis::cmd("CLIENT");
        command.arg("INFO");
        let reply = self
            .request("CLIENT INFO", conn.route_command(command, routing))
            .await?;
        let replies: Vec<Value> = match reply {
            Value::Map(pairs) => pairs.into_iter().map(|(_node, reply)| reply).collect(),
            other => vec![other],
        };
        let mut total = 0;
        for reply in replies {
            let info = match reply {
                Value::BulkString(text) => text,
                Value::VerbatimString { text, .. } => text.into_bytes(),
                Value::ServerError(e) => return Err(format!("CLIENT INFO failed: {e:?}")),
                other => return Err(format!("unexpected reply to CLIENT INFO: {other:?}")),
            };
            total += sharded_subscriptions(&info)
                .ok_or_else(|| "CLIENT INFO did not say how many channels".to_owned())?;
        }
        Ok(total)
    }

    /// Runs a request with the request timeout.
    pub(super) async fn request<T>(
        &self,
        what: &str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        timed("the Redis Cluster", what, self.request_timeout, request).await
    }
}

impl Pages for Core {
    async fn read_page(&self, topic: &Topic, after: u64, count: usize) -> Result<Page, String> {
        let (stream, state) = (self.names.stream(topic), self.names.state(topic));
        let keys = StreamKeys {
            stream: &stream,
            state: &state,
            clock: None,
        };
        let read = Read {
            topic,
            after,
            count,
            idle_ttl: self.idle_ttl,
            timeout: self.request_timeout,
            numbering: Numbering::PerTopic,
        };
        read_page(&mut self.conn.clone(), keys, read).await
    }
}

/// Publishes go over the cluster connection, routed by key; `WAIT` goes to the topic's primary.
impl Route for Core {
    type Conn = ClusterConnection;

    fn connection(&self) -> Option<ClusterConnection> {
        Some(self.conn.clone())
    }

    fn wait(
        &self,
        conn: &mut ClusterConnection,
        state_key: &str,
        wait: Cmd,
    ) -> impl Future<Output = RedisResult<i64>> + Send {
        let route = NodeRoute::with_key(state_key, SlotAddr::Master);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        async move {
            let reply = conn.route_command(wait, routing).await?;
            ::redis::from_redis_value::<i64>(reply).map_err(::redis::RedisError::from)
        }
    }
}

/// The `ssub=` count of a `CLIENT INFO` line.
fn sharded_subscriptions(info: &[u8]) -> Option<usize> {
    let info = std::str::from_utf8(info).ok()?;
    info.split_ascii_whitespace()
        .find_map(|field| field.strip_prefix("ssub="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info() {
        let info = b"id=3 addr=127.0.0.1:1 flags=P db=0 sub=0 psub=0 ssub=12 multi=-1\n";
        assert_eq!(sharded_subscriptions(info), Some(12));
        assert_eq!(sharded_subscriptions(b"id=3 sub=1"), None);
    }
}
