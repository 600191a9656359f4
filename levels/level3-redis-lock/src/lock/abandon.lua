-- Undo the hold that one abandoned attempt may have created.
--
-- An attempt whose caller stopped waiting for the reply (a cancelled request)
-- may still have run in Redis and taken the lock for an owner who will never
-- release it. Everyone would wait out the lease. So the client sends this
-- script after such an attempt; one connection keeps order, so it runs after
-- the attempt did (or would have).
--
-- KEYS[1]  the lock hash
-- KEYS[2]  the line of waiting processes
-- ARGV[1]  the owner
-- ARGV[2]  the abandoned attempt's id
-- ARGV[3]  the channel waiters listen on
-- ARGV[4]  the lease to re-arm when holds remain, in milliseconds
-- ARGV[5]  how long the next process has to claim the lock, in milliseconds
-- ARGV[6]  the abandoning process's instance id if it has other tasks
--          waiting for this lock, else '' (as in release.lua: the attempt
--          may have taken this process out of the line when it took the
--          lock, and nobody else would wake those tasks)
--
-- Returns 1 when a hold was undone, 0 when the attempt had not created the
-- hold that is there now (it found the lock taken, or the same owner has
-- taken the lock afresh since): then nothing is touched.

local lock, line = KEYS[1], KEYS[2]
local owner, attempt, channel, lease, grant_ms, requeue = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local held = redis.call('HMGET', lock, owner, 'attempt')
if not held[1] or held[2] ~= attempt then
  return 0
end
-- The hold was created by that attempt, and may since have been taken again
-- by the same owner (reentrancy): give back exactly the one hold it added.
if tonumber(held[1]) > 1 then
  redis.call('HINCRBY', lock, owner, -1)
  redis.call('PEXPIRE', lock, lease)
  return 1
end
-- Free again: hand it on exactly as release.lua does.
hand_on(lock, line, channel, grant_ms, requeue)
return 1
