-- Take the lock, or say how long until it might be free.
--
-- KEYS[1]  the lock: a hash
--          { <owner> = <reentrancy count>, fence = <token>, attempt = <id> }
-- KEYS[2]  the lock's fencing counter: a plain integer that never expires
-- ARGV[1]  the owner asking: "<instance id>:<task id>" (always contains a ':',
--          so it can never be mistaken for the other two fields)
-- ARGV[2]  the lease, in milliseconds
-- ARGV[3]  this attempt's id, kept in the hash's `attempt` field when the
--          attempt creates the hold, so that a caller who gave up waiting for
--          the reply can undo exactly this hold (see abandon.lua)
--
-- Returns {1, fencing token} when the caller holds the lock now, or
--         {0, milliseconds left on the holder's lease} when someone else does.
--
-- Redis runs a script from start to end with nothing in between, so
-- "is it free? then it is mine" cannot be split by another client: this is
-- SET NX PX, plus what a plain string key cannot do (reentrancy, the token,
-- the remaining lease), in one round trip.

local lock, counter = KEYS[1], KEYS[2]
local owner, lease, attempt = ARGV[1], ARGV[2], ARGV[3]

-- The next fencing token: one more than the last, but never below the
-- server's clock in microseconds. INCR alone restarts at 1 if Redis loses its
-- data (a restart without persistence), while ticket rows remember the old,
-- higher tokens and would refuse every sale. The clock floor keeps tokens
-- growing across such a restart; the counter keeps them strictly increasing
-- even if the clock stalls. (Lua numbers are doubles: exact up to 2^53, which
-- microseconds since 1970 stay below for another two centuries. string.format
-- keeps Redis from turning a big number into "1.7e+15".)
local function next_token()
  local token = redis.call('INCR', counter)
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if token < floor then
    token = floor
    redis.call('SET', counter, string.format('%d', token))
  end
  return token
end

-- Free: the caller takes it, with a reentrancy count of 1 and a fresh token.
if redis.call('EXISTS', lock) == 0 then
  local token = next_token()
  redis.call('HSET', lock, owner, 1, 'fence', string.format('%d', token), 'attempt', attempt)
  redis.call('PEXPIRE', lock, lease)
  return {1, token}
end

-- Already the caller's: count one more hold and renew the lease. The token
-- stays the same: it names the whole hold, not each nested acquisition, so an
-- outer write is never refused because of an inner one.
if redis.call('HEXISTS', lock, owner) == 1 then
  redis.call('HINCRBY', lock, owner, 1)
  redis.call('PEXPIRE', lock, lease)
  return {1, tonumber(redis.call('HGET', lock, 'fence'))}
end

-- Someone else's: tell the caller how long the holder's lease has left, which
-- is the longest a waiter ever needs to sleep before looking again.
return {0, redis.call('PTTL', lock)}
