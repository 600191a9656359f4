-- The watchdog's renewal: push the lease back, but only if we still hold it.
--
-- KEYS[1]  the lock hash
-- ARGV[1]  the owner
-- ARGV[2]  the lease, in milliseconds
--
-- Returns 1 when renewed, 0 when the lock is no longer this owner's (the lease
-- already ran out, and the key is gone or someone else's): the guard is lost.

if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
