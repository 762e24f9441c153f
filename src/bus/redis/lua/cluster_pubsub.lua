-- Cluster, Pub/Sub: numbers an event of the topic and announces it on its shard.
-- KEYS and ARGV: see the prelude; ARGV[8] the idle TTL (ms) of the topic's state.
local epoch, seq = number_event()
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('SPUBLISH', ARGV[2], frame(epoch, seq))
return {epoch, seq, 0}
