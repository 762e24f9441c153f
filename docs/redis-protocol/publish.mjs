// Publishing into a tower-sse bus from Node with the `redis` package (node-redis; tested with
// 6.3.1), by the Redis publish protocol, version 1 (../redis-protocol.md).
//
// Each function takes a client of your own (createClient() for one server, createCluster() for
// a cluster), the topic, the data and, optionally, the event type, and resolves to the event's
// id, the one subscribers receive: await publishStreams(client, 'orders', 'order 17', 'shipped')
// gives something like '0a1b2c3d-42'. Use the function of the wiring your instances run.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

// The crate's scripts: take those of the tower-sse version your instances run.
const LUA = new URL('../../src/bus/redis/lua/', import.meta.url);
const PROTOCOL = '-- tower-sse Redis publish protocol v1';

// What the instances' RedisConfig says (here its defaults).
const PREFIX = 'tower-sse';
const MAX_LEN = 1000; // stream_max_len
const MAX_AGE_MS = 3_600_000; // stream_max_age
const IDLE_TTL_MS = 86_400_000; // stream_idle_ttl, at least stream_max_age
const REMEMBER_S = 120; // how long Redis remembers an idempotency key (Streams)

const scripts = new Map();

function script(wiring) {
  if (!scripts.has(wiring)) {
    const prelude = readFileSync(new URL('prelude.lua', LUA), 'utf8');
    if (!prelude.startsWith(`${PROTOCOL}\n`)) {
      throw new Error(`${LUA} does not speak the protocol these functions speak`);
    }
    scripts.set(wiring, prelude + readFileSync(new URL(`${wiring}.lua`, LUA), 'utf8'));
  }
  return scripts.get(wiring);
}

// The event's fields (ARGV[4]): its type, then one data line per line of the data.
export function fields(data, event) {
  let out = '';
  if (event !== undefined && event !== null) {
    if (/[\r\n]/.test(event) || event.startsWith('sse-')) {
      throw new Error(`event type ${JSON.stringify(event)}: no line breaks, no sse- prefix`);
    }
    out += event ? `event: ${event}\n` : 'event:\n';
  }
  for (const line of data.split(/\r\n|\r|\n/)) {
    out += line ? `data: ${line}\n` : 'data:\n';
  }
  return out;
}

async function publish(client, wiring, keys, channel, data, event, rememberS = 0) {
  const args = [
    randomBytes(4).toString('hex'), // an epoch, adopted if the bus has none yet
    channel,
    `:@t=${Date.now() * 1000}\n`, // the envelope: when, in microseconds
    fields(data, event),
    rememberS,
    MAX_LEN,
    MAX_AGE_MS,
    IDLE_TTL_MS,
  ];
  const [epoch, seq] = await client.eval(script(wiring), { keys, arguments: args.map(String) });
  return `${epoch}-${seq}`;
}

// One server, Pub/Sub.
export function publishPubSub(client, topic, data, event) {
  const keys = [`${PREFIX}:state`];
  return publish(client, 'pubsub', keys, `${PREFIX}:t:${topic}`, data, event);
}

// One server, Streams. Send a publish again with the same key to store it once.
export function publishStreams(client, topic, data, event, key = randomBytes(16).toString('hex')) {
  const keys = [`${PREFIX}:state`, `${PREFIX}:s:${topic}`, `${PREFIX}:i:${key}`, `${PREFIX}:clock`];
  return publish(client, 'streams', keys, `${PREFIX}:n:${topic}`, data, event, REMEMBER_S);
}

// Redis Cluster, Pub/Sub.
export function publishClusterPubSub(cluster, topic, data, event) {
  const tag = `${PREFIX}:{${topic}}`;
  return publish(cluster, 'cluster_pubsub', [`${tag}:state`], `${tag}:t`, data, event);
}

// Redis Cluster, Streams. Send a publish again with the same key to store it once.
export function publishClusterStreams(cluster, topic, data, event, key = randomBytes(16).toString('hex')) {
  const tag = `${PREFIX}:{${topic}}`;
  const keys = [`${tag}:state`, `${tag}:s`, `${tag}:i:${key}`];
  return publish(cluster, 'cluster_streams', keys, `${tag}:n`, data, event, REMEMBER_S);
}
