-- One server, Pub/Sub: numbers an event and announces it. KEYS and ARGV: see the prelude.
local epoch, seq = number_event()
redis.call('PUBLISH', ARGV[2], frame(epoch, seq))
return {epoch, seq, 0}
