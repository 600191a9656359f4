-- The watchdog's renewal: push the lease back, but only if we still hold it.
--
-- KEYS[1]  the lock hash
-- ARGV[1]  the owner
-- ARGV[2]  the lease, in milliseconds
-- ARGV[3]  the fencing token of the hold being kept alive: a hold that ended
--          is not revived, even if the same owner has taken the lock afresh
--          since (that new hold has its own token, and its own watchdog)
--
-- The lease only ever grows ('GT'): another guard of the same hold (a
-- reentrant one with a longer fixed lease) may believe in a later end, and
-- a renewal must not cut that short.
--
-- Returns 1 when renewed, 0 when the hold is over (the lease already ran out,
-- and the key is gone or someone else's): the guard is lost.

local held = redis.call('HMGET', KEYS[1], ARGV[1], 'fence')
if held[1] and held[2] == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
  return 1
end
return 0
