-- Writes one instance's count of a topic. ARGV[1]: the instance, ARGV[2]: its count ('0'
-- removes it), ARGV[3]: how long the count lives (ms). Answers 1.
local now = now_ms()
-- Counts of instances that stopped writing; a few per call, the rest go with later writes.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 16)
for _, id in ipairs(dead) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[1], id)
end
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
-- The keys live until the last deadline in them: when nobody writes, they expire.
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
