-- Reads a page of a topic's stream (entries.rs parses the answer).
-- KEYS: 1 the stream, 2 the state hash, 3 (one server) the clock. ARGV: 1 the first sequence
-- number to read, 2 at most this many entries, 3 the idle TTL (ms).
--
-- Answers {1, entries} when the stream exists. Otherwise {0, entries, after, seq}: `after` is the
-- first checkpoint newer than the idle TTL (any event of the topic is numbered below it), or
-- false when there is none (or no clock); then the current `seq` bounds them.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
if #entries > 0 or redis.call('EXISTS', KEYS[1]) == 1 then
  return {1, entries}
end
local after = false
if KEYS[3] then
  local since = '(' .. (now_ms() - tonumber(ARGV[3]))
  after = redis.call('ZRANGEBYSCORE', KEYS[3], since, '+inf', 'LIMIT', 0, 1)[1] or false
end
return {0, entries, after, redis.call('HGET', KEYS[2], 'seq') or '0'}
