//! The Lua scripts the backends run, from `lua/`, each with `lua/prelude.lua` in front: the
//! numbering of an event, the frame it is announced and stored as, and idempotency are written
//! once there. Each script's file says what it takes and answers.
//!
//! The four publish scripts are also a protocol for publishers in other languages, versioned by
//! [`PROTOCOL_VERSION`] and described in `docs/redis-protocol.md`.

use std::sync::LazyLock;

use ::redis::Script;

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

/// The version of the Redis publish protocol the bus speaks: the scripts another program calls
/// to publish into a bus from any language, with their keys, arguments and reply, the names of
/// the keys and channels, and the event frames the instances accept.
///
/// The protocol is described in `docs/redis-protocol.md` (in the repository and in the crate's
/// package), with tested publish functions for Python and Node under `docs/redis-protocol/`.
/// The scripts to call are the crate's `src/bus/redis/lua/prelude.lua` followed by one of
/// `pubsub.lua`, `streams.lua`, `cluster_pubsub.lua` or `cluster_streams.lua`; the prelude's
/// first line says the version (`-- tower-sse Redis publish protocol v1`).
///
/// The number changes with any change that a publisher or an instance speaking the previous
/// version would misread; instances and publishers of one version work together.
pub const PROTOCOL_VERSION: u32 = 1;

/// Reads (or starts) a numbering's epoch and its last sequence number.
pub(super) static STATE: LazyLock<Script> = script!("state.lua");

/// Replaces a cluster topic's epoch whose counter went back.
pub(super) static NEW_EPOCH: LazyLock<Script> = script!("new_epoch.lua");

/// Reads a page of a topic's stream.
pub(super) static READ: LazyLock<Script> = script!("read.lua");

/// Publishes on one server, Pub/Sub.
pub(super) static PUBSUB: LazyLock<Script> = script!("pubsub.lua");

/// Publishes on one server, Streams.
pub(super) static STREAMS: LazyLock<Script> = script!("streams.lua");

/// Publishes on a cluster, Pub/Sub.
pub(super) static CLUSTER_PUBSUB: LazyLock<Script> = script!("cluster_pubsub.lua");

/// Publishes on a cluster, Streams.
pub(super) static CLUSTER_STREAMS: LazyLock<Script> = script!("cluster_streams.lua");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prelude_says_the_protocol_version() {
        let first = include_str!("lua/prelude.lua").lines().next();
        let marker = format!("-- tower-sse Redis publish protocol v{PROTOCOL_VERSION}");
        assert_eq!(first, Some(marker.as_str()));
    }
}
