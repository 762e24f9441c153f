//! The Lua scripts the backends run, from `lua/`, each with `lua/prelude.lua` in front: the
//! numbering of an event, the frame it is announced and stored as, and idempotency are written
//! once there. Each script's file says what it takes and answers.

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
