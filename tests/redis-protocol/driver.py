"""Runs one publish function of docs/redis-protocol/publish.py, as written, for
tests/redis_protocol.rs:

    python3 driver.py WIRING URL TOPIC DATA [EVENT]

WIRING is pubsub, streams, cluster_pubsub or cluster_streams; URL a node's redis:// URL. Prints
the id the publish got.
"""

import sys
from pathlib import Path

import redis
from redis.cluster import RedisCluster

sys.dont_write_bytecode = True  # nothing left behind in docs/
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "redis-protocol"))
import publish  # noqa: E402

wiring, url, topic, data, *rest = sys.argv[1:]
event = rest[0] if rest else None
if wiring.startswith("cluster_"):
    client = RedisCluster.from_url(url)
else:
    client = redis.Redis.from_url(url)
print(getattr(publish, f"publish_{wiring}")(client, topic, data, event))
client.close()
