-- Reads the epoch (adopting ARGV[1] when there is none) and the last sequence number.
-- KEYS[1] the state hash. ARGV[2], on a cluster: a hash created here expires after this many ms.
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 and ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return state()
