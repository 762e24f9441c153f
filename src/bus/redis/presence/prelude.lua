-- The prelude of the presence scripts (presence/mod.rs puts it in front of each).
--
-- A topic's presence is two keys in the topic's slot:
--   KEYS[1]  a hash: instance id -> the instance's subscriptions to the topic
--   KEYS[2]  a sorted set: instance id, scored with the deadline of its count (ms, the
--            server's clock, so instances' clocks do not matter)
-- A count past its deadline belongs to an instance that stopped writing (it was killed): reads
-- skip it, writes remove it.

-- The server's clock, in milliseconds.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
