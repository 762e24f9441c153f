-- Starts a new epoch for a topic whose counter went back (a failover lost events the old primary
-- had acknowledged), unless another instance did already. Answers as state.lua does.
-- KEYS[1] the state hash. ARGV: 1 the epoch that went back, 2 the new one, 3 the idle TTL (ms).
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return state()
