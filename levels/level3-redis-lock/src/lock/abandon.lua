-- Undo the hold that one abandoned attempt may have created.
--
-- An attempt whose caller stopped waiting for the reply (a cancelled request,
-- or a reply that timed out) may still have run in Redis and taken the lock,
-- or one more reentrant hold of it, for an owner who will never release it.
-- Everyone would wait out the lease, or the count would never get back to
-- zero. So the client sends this script after such an attempt; one
-- connection keeps order, so it runs after the attempt did (or would have).
--
-- KEYS[1]  the lock hash
-- KEYS[2]  the line of waiting processes
-- ARGV[1]  the owner
-- ARGV[2]  the abandoned attempt's id
-- ARGV[3]  the channel waiters listen on
-- ARGV[4]  how long the next process has to claim the lock, in milliseconds
-- ARGV[5]  the abandoning process's instance id if it has other tasks
--          waiting for this lock, else '' (as in release.lua: the attempt
--          may have taken this process out of the line when it took the
--          lock, and nobody else would wake those tasks)
-- ARGV[6]  '1' on a Redis Cluster: announce with SPUBLISH (see hand_on.lua)
--
-- Returns 1 when a hold was undone, 0 when the attempt had added no hold to
-- the one there now (it found the lock taken, or the hold it took has ended
-- and the same owner has taken the lock afresh since): then nothing is
-- touched.

local lock, line = KEYS[1], KEYS[2]
local owner, attempt, channel, grant_ms, requeue, sharded = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local marker = 'attempt-' .. attempt
local held = redis.call('HMGET', lock, owner, marker)
if not held[1] or not held[2] then
  return 0
end
-- The attempt added one hold (the first, or a reentrant one): give back
-- exactly that one. The lease is left alone: the remaining holds' guards
-- believe in it.
if tonumber(held[1]) > 1 then
  redis.call('HSET', lock, owner, tonumber(held[1]) - 1)
  redis.call('HDEL', lock, marker)
  return 1
end
-- Free again: hand it on exactly as release.lua does.
hand_on(lock, line, channel, grant_ms, requeue, sharded)
return 1
