-- Cluster, Streams: numbers, stores, trims and announces an event of the topic (cluster/mod.rs).
-- KEYS: 1-3 see the prelude (2 the topic's stream, 3 the idempotency key).
-- ARGV: 1-5 see the prelude, 6 the count limit, 7 the age limit (ms), 8 the idle TTL (ms).
--
-- Trimming by age looks at the oldest entry; once it is an eighth of the limit too old, a binary
-- search over the sequence numbers (a topic's are contiguous, and publish times grow with them)
-- finds the first entry young enough, and everything before it goes. The newest entry always
-- stays. A topic's sequence numbers stay far below 2^53, where Lua's numbers are exact.
local done = remembered()
if done then return done end
local epoch, seq, adopted = number_event()
if adopted then redis.call('DEL', KEYS[2]) end
local now = now_ms()
local event = frame(epoch, seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], seq .. '-0', 't', now, 'f', event)
local max_age = tonumber(ARGV[7])
local function seq_of(entry) return tonumber(string.match(entry[1], '^(%d+)')) end
local function old(entry) return now - tonumber(entry[2][2]) > max_age end
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if head and now - tonumber(head[2][2]) > max_age + max_age / 8 then
  local lo, hi = seq_of(head), tonumber(seq)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('XRANGE', KEYS[2], mid .. '-0', '+', 'COUNT', 1)[1]
    if old(entry) then lo = seq_of(entry) + 1 else hi = mid end
  end
  redis.call('XTRIM', KEYS[2], 'MINID', lo .. '-0')
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
remember(epoch, seq)
redis.call('SPUBLISH', ARGV[2], event)
return {epoch, seq, 0}
