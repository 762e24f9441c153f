"""Publishing into a tower-sse bus from Python with redis-py, by the Redis publish protocol,
version 1 (../redis-protocol.md).

Each function takes a client of your own (redis.Redis for one server, redis.cluster.RedisCluster
for a cluster), the topic, the data and, optionally, the event type, and returns the event's
id, the one subscribers receive: publish_streams(r, "orders", "order 17", "shipped") gives
something like "0a1b2c3d-42". Use the function of the wiring your instances run.
"""

import functools
import secrets
import time
from pathlib import Path

# The crate's scripts: take those of the tower-sse version your instances run.
LUA = Path(__file__).resolve().parents[2] / "src" / "bus" / "redis" / "lua"
PROTOCOL = "-- tower-sse Redis publish protocol v1"

# What the instances' RedisConfig says (here its defaults).
PREFIX = "tower-sse"
MAX_LEN = 1000  # stream_max_len
MAX_AGE_MS = 3_600_000  # stream_max_age
IDLE_TTL_MS = 86_400_000  # stream_idle_ttl, at least stream_max_age
REMEMBER_S = 120  # how long Redis remembers an idempotency key (Streams)


@functools.cache
def script(wiring):
    prelude = (LUA / "prelude.lua").read_text()
    if not prelude.startswith(PROTOCOL + "\n"):
        raise RuntimeError(f"{LUA} does not speak the protocol these functions speak")
    return prelude + (LUA / f"{wiring}.lua").read_text()


def fields(data, event=None):
    """The event's fields (ARGV[4]): its type, then one data line per line of the data."""
    out = ""
    if event is not None:
        if "\r" in event or "\n" in event or event.startswith("sse-"):
            raise ValueError(f"event type {event!r}: no line breaks, no sse- prefix")
        out += f"event: {event}\n" if event else "event:\n"
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out += f"data: {line}\n" if line else "data:\n"
    return out


def publish(client, wiring, keys, channel, data, event=None, remember_s=0):
    args = [
        secrets.token_hex(4),  # an epoch, adopted if the bus has none yet
        channel,
        f":@t={time.time_ns() // 1000}\n",  # the envelope: when, in microseconds
        fields(data, event),
        remember_s,
        MAX_LEN,
        MAX_AGE_MS,
        IDLE_TTL_MS,
    ]
    epoch, seq, _repeated = client.eval(script(wiring), len(keys), *keys, *args)
    return f"{text(epoch)}-{text(seq)}"


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def publish_pubsub(r, topic, data, event=None):
    """One server, Pub/Sub."""
    keys = [f"{PREFIX}:state"]
    return publish(r, "pubsub", keys, f"{PREFIX}:t:{topic}", data, event)


def publish_streams(r, topic, data, event=None, key=None):
    """One server, Streams. Send a publish again with the same key to store it once."""
    key = key or secrets.token_hex(16)
    keys = [f"{PREFIX}:state", f"{PREFIX}:s:{topic}", f"{PREFIX}:i:{key}", f"{PREFIX}:clock"]
    return publish(r, "streams", keys, f"{PREFIX}:n:{topic}", data, event, REMEMBER_S)


def publish_cluster_pubsub(rc, topic, data, event=None):
    """Redis Cluster, Pub/Sub."""
    tag = f"{PREFIX}:{{{topic}}}"
    return publish(rc, "cluster_pubsub", [f"{tag}:state"], f"{tag}:t", data, event)


def publish_cluster_streams(rc, topic, data, event=None, key=None):
    """Redis Cluster, Streams. Send a publish again with the same key to store it once."""
    tag = f"{PREFIX}:{{{topic}}}"
    key = key or secrets.token_hex(16)
    keys = [f"{tag}:state", f"{tag}:s", f"{tag}:i:{key}"]
    return publish(rc, "cluster_streams", keys, f"{tag}:n", data, event, REMEMBER_S)
