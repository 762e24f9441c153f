-- The subscriptions to a topic on every instance whose count is live, but ARGV[1] (the reader,
-- which adds its own count as it is now). A count that is not a whole number from 1 to 10^9 (no
-- instance holds more streams) counts nothing, whoever wrote it.
local now = now_ms()
local live = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  live[id] = true
end
local counts = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #counts, 2 do
  local id, n = counts[i], tonumber(counts[i + 1])
  if live[id] and id ~= ARGV[1] and n and n >= 1 and n <= 1e9 and n == math.floor(n) then
    total = total + n
  end
end
return total
