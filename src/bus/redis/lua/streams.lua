-- One server, Streams: numbers, stores, trims and announces an event (server/streams.rs).
-- KEYS: 1-3 see the prelude (2 the topic's stream, 3 the idempotency key), 4 the clock.
-- ARGV: see the prelude (6 the count limit, 7 the age limit, 8 the idle TTL).
--
-- The clock gets a checkpoint at most every `step` ms: a thousandth of the idle TTL, at least a
-- second, so it holds about a thousand and bounds derived from it are that coarse.
local done = remembered()
if done then return done end
local epoch, seq, adopted = number_event()
if adopted then redis.call('DEL', KEYS[4]) end
local newest_checkpoint = redis.call('ZRANGE', KEYS[4], -1, -1)[1]
if newest_checkpoint and tonumber(newest_checkpoint) >= tonumber(seq) then
  -- Left over from an epoch that ended.
  redis.call('DEL', KEYS[4])
end
local now = now_ms()
local idle = tonumber(ARGV[8])
local step = math.max(1000, math.floor(idle / 1024))

local prev
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last then
  local stored
  for i = 1, #last[2], 2 do
    if last[2][i] == 'f' then stored = last[2][i + 1] end
  end
  if stored and of_epoch(stored, epoch) then
    prev = string.sub(last[1], 1, -3)
  else
    -- Left over from an epoch that ended: none of it belongs to this history.
    redis.call('DEL', KEYS[2])
  end
end
if not prev then
  local after = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. (now - idle), '+inf', 'LIMIT', 0, 1)[1]
  prev = '~' .. (after or seq)
end

local event = frame(epoch, seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], seq .. '-0', 'f', event, 'p', prev)
local cutoff = redis.call('ZREVRANGEBYSCORE', KEYS[4], now - tonumber(ARGV[7]), '-inf', 'LIMIT', 0, 1)[1]
if cutoff then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', cutoff .. '-0')
end
redis.call('PEXPIRE', KEYS[2], idle)

local newest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
if not newest[2] or now - tonumber(newest[2]) >= step then
  redis.call('ZADD', KEYS[4], now, seq)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (now - idle - 2 * step))
  redis.call('PEXPIRE', KEYS[4], idle + 2 * step)
end

redis.call('PUBLISH', ARGV[2], prev .. ' ' .. event)
remember(epoch, seq)
return {epoch, seq, 0}
