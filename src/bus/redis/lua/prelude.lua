-- tower-sse Redis publish protocol v1
--
-- The prelude of every script (scripts.rs puts it in front of each). The publish scripts are a
-- public protocol, for publishers in other languages too: docs/redis-protocol.md describes it.
-- Any change that a publisher or an instance of the previous version would misread changes the
-- version, here and in `PROTOCOL_VERSION` (scripts.rs).
--
-- Every publish script takes
--   KEYS[1]  the state hash that numbers the event (`epoch`, `seq`)
--   ARGV[1]  an epoch to adopt when the hash has none (8 lowercase hex digits)
--   ARGV[2]  the channel that announces the event
--   ARGV[3]  the envelope's line (envelope.rs), or nothing
--   ARGV[4]  the event's fields, as `Event::encode_body` wrote them
--   ARGV[5]  how long to remember the idempotency key KEYS[3] (s; '0': not at all)
--   ARGV[6]  Streams: the count limit of the topic's stream
--   ARGV[7]  Streams: the age limit (ms)
--   ARGV[8]  the idle TTL (ms) of the topic's stream (and, on a cluster, of its state)
-- (the same eight for every script; those it does not use are ignored) and answers
-- {epoch, seq, repeated}. Sequence numbers stay the strings Redis stores, never Lua numbers
-- (doubles), so they are exact at any size.

-- The epoch and sequence number of the topic's (or namespace's) last event.
local function state()
  local s = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
  return {s[1], s[2] or '0'}
end

-- Takes the next number: the epoch, the sequence number, and whether the epoch was adopted just
-- now (the hash was missing).
local function number_event()
  local epoch = redis.call('HGET', KEYS[1], 'epoch')
  local adopted = false
  if not epoch then
    epoch = ARGV[1]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
    adopted = true
  end
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  return epoch, redis.call('HGET', KEYS[1], 'seq'), adopted
end

-- The frame subscribers receive: the envelope's line, the event's fields, its id, and the blank
-- line that ends it. The layout is documented, and checked on receipt, in validate.rs.
local function frame(epoch, seq)
  return ARGV[3] .. ARGV[4] .. 'id: ' .. epoch .. '-' .. seq .. '\n\n'
end

-- Whether a frame `frame` wrote is numbered in `epoch`.
local function of_epoch(stored, epoch)
  return string.match(string.sub(stored, -40), 'id: (%x+)%-%d+\n\n$') == epoch
end

-- The server's clock, in milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The answer a publish with this idempotency key got, when it is remembered.
local function remembered()
  if ARGV[5] == '0' then return nil end
  local done = redis.call('GET', KEYS[3])
  if not done then return nil end
  local e, s = string.match(done, '^(%x+)-(%d+)$')
  if e then return {e, s, 1} end
end

local function remember(epoch, seq)
  if ARGV[5] ~= '0' then
    redis.call('SET', KEYS[3], epoch .. '-' .. seq, 'EX', ARGV[5])
  end
end

