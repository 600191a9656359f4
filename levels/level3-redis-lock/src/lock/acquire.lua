-- Take the lock, or say how long until it is worth looking again.
--
-- KEYS[1]  the lock: a hash
--          { <owner> = <reentrancy count>, fence = <token>, attempt = <id> }
-- KEYS[2]  the lock's fencing counter: a plain integer that never expires
-- KEYS[3]  the line of waiting processes: a list of instance ids, oldest first
-- KEYS[4]  the grant: the instance id the last release handed the lock to
-- ARGV[1]  the owner asking: "<instance id>:<task id>" (always contains a ':',
--          so it can never be mistaken for the `fence` or `attempt` field)
-- ARGV[2]  the lease, in milliseconds
-- ARGV[3]  this attempt's id, kept in the hash's `attempt` field when the
--          attempt creates the hold, so that a caller who gave up waiting for
--          the reply can undo exactly this hold (see abandon.lua)
-- ARGV[4]  the caller's instance id (its process)
-- ARGV[5]  '1' if the caller will wait when refused: its process joins the line
-- ARGV[6]  '1' if the caller's process has more tasks waiting behind it: when
--          this attempt succeeds, the process goes to the back of the line
-- ARGV[7]  how long the line is kept after it last changed, in milliseconds
--
-- Returns {1, fencing token} when the caller holds the lock now, or
--         {0, milliseconds} when it does not: the holder's remaining lease, or
--         how long the process the lock was handed to has left to claim it.
--
-- Redis runs a script from start to end with nothing in between, so
-- "is it free? then it is mine" cannot be split by another client: this is
-- SET NX PX, plus what a plain string key cannot do (reentrancy, the token,
-- the remaining lease, a fair line), in one round trip.

local lock, counter, line, grant = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner, lease, attempt = ARGV[1], ARGV[2], ARGV[3]
local instance, will_wait, more, keep_line = ARGV[4], ARGV[5], ARGV[6], ARGV[7]

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

-- Puts the caller's process at the back of the line, once.
local function join_line()
  if not redis.call('LPOS', line, instance) then
    redis.call('RPUSH', line, instance)
  end
  redis.call('PEXPIRE', line, keep_line)
end

-- Already the caller's: count one more hold and renew the lease. The token
-- stays the same: it names the whole hold, not each nested acquisition, so an
-- outer write is never refused because of an inner one.
if redis.call('HEXISTS', lock, owner) == 1 then
  redis.call('HINCRBY', lock, owner, 1)
  redis.call('PEXPIRE', lock, lease)
  return {1, tonumber(redis.call('HGET', lock, 'fence'))}
end

if redis.call('EXISTS', lock) == 0 then
  -- Free, but the last release may have handed it to a process that waited
  -- longer. Until that process claims it (or its grant runs out), it is not
  -- ours to take: no barging past the line.
  local granted = redis.call('GET', grant)
  if granted and granted ~= instance then
    if will_wait == '1' then
      join_line()
    end
    return {0, redis.call('PTTL', grant)}
  end

  -- Ours: a reentrancy count of 1, a fresh token, a lease.
  local token = next_token()
  redis.call('HSET', lock, owner, 1, 'fence', string.format('%d', token), 'attempt', attempt)
  redis.call('PEXPIRE', lock, lease)
  if granted then
    redis.call('DEL', grant)
  end
  -- Served: leave the line, and rejoin at the back if more of our process's
  -- tasks are waiting, so that processes take turns.
  redis.call('LREM', line, 0, instance)
  if more == '1' then
    join_line()
  end
  return {1, token}
end

-- Someone else's: tell the caller how long the holder's lease has left, which
-- is the longest a waiter ever needs to sleep before looking again.
if will_wait == '1' then
  join_line()
end
return {0, redis.call('PTTL', lock)}
