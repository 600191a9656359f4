-- Pass on a grant this process cannot use.
--
-- A release handed the lock to this process, but by the time the message
-- arrived nobody here was waiting any more (they gave up, or were
-- cancelled). Rather than make everyone wait for the grant to run out, hand
-- the lock to the next process in line at once.
--
-- KEYS[1]  the lock hash
-- KEYS[2]  the line of waiting processes
-- ARGV[1]  this process's instance id
-- ARGV[2]  the channel waiters listen on
-- ARGV[3]  how long the next process has to claim the lock, in milliseconds
-- ARGV[4]  '1' on a Redis Cluster: announce with SPUBLISH (see hand_on.lua)
--
-- Returns 1 when the grant was passed on, 0 when it was not ours (any more).

local lock, line = KEYS[1], KEYS[2]
local instance, channel, grant_ms, sharded = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

redis.call('LREM', line, 0, instance)
if redis.call('HGET', lock, 'grant') ~= instance then
  return 0
end
-- Nobody here waits, so nobody of ours goes back in line.
hand_on(lock, line, channel, grant_ms, '', sharded)
return 1
