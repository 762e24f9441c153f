// Runs one publish function of docs/redis-protocol/publish.mjs, as written, for
// tests/redis_protocol.rs:
//
//     node driver.mjs WIRING URL TOPIC DATA [EVENT]
//
// WIRING is pubsub, streams, cluster_pubsub or cluster_streams; URL a node's redis:// URL.
// Prints the id the publish got.

import { createClient, createCluster } from 'redis';
import {
  publishClusterPubSub,
  publishClusterStreams,
  publishPubSub,
  publishStreams,
} from '../../docs/redis-protocol/publish.mjs';

const functions = {
  pubsub: publishPubSub,
  streams: publishStreams,
  cluster_pubsub: publishClusterPubSub,
  cluster_streams: publishClusterStreams,
};

const [wiring, url, topic, data, event] = process.argv.slice(2);
const client = wiring.startsWith('cluster_')
  ? createCluster({ rootNodes: [{ url }] })
  : createClient({ url });
client.on('error', (error) => {
  console.error(error);
  process.exit(1);
});
await client.connect();
console.log(await functions[wiring](client, topic, data, event));
process.exit(0);
