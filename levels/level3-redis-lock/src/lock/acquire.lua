-- Take the lock, or say how long until it is worth looking again.
--
-- KEYS[1]  the lock: a hash. While held:
--            { <owner> = <reentrancy count>, fence = <token>,
--              attempt-<id> = 1 for every attempt that took a hold of it }
--          While handed to a waiting process (see release.lua):
--            { grant = <instance id> }, for a short while
-- KEYS[2]  the lock's fencing counter: a plain integer that never expires
-- KEYS[3]  the line of waiting processes: a list of instance ids, oldest first
-- ARGV[1]  the owner asking: "<instance id>:<task id>" (always contains a ':',
--          so it can never be mistaken for one of the other fields)
-- ARGV[2]  the lease, in milliseconds
-- ARGV[3]  this attempt's id, marked in the hash (`attempt-<id>`) when the
--          attempt takes a hold, first or reentrant, so that a caller who gave
--          up waiting for the reply can undo exactly this hold (abandon.lua)
-- ARGV[4]  the caller's instance id (its process)
-- ARGV[5]  '1' if the caller will wait when refused: its process joins the line
-- ARGV[6]  '1' if the caller's process has more tasks waiting behind it: once
--          served, the process goes to the back of the line
-- ARGV[7]  how long the line is kept after it last changed, in milliseconds
-- ARGV[8]  '1' if the caller's process may be in the line (then it leaves it
--          when served); '0' spares the uncontended path that work
--
-- Returns {1, fencing token} when the caller holds the lock now, or
--         {0, milliseconds} when it does not: the holder's remaining lease, or
--         how long the process the lock was handed to has left to claim it.
--
-- Redis runs a script from start to end with nothing in between, so
-- "is it free? then it is mine" cannot be split by another client: this is
-- SET NX PX, plus what a plain string key cannot do (reentrancy, the token,
-- the remaining lease, a fair line), in one round trip. The free path, the
-- one taken when nobody competes, is four calls.

local lock, counter, line = KEYS[1], KEYS[2], KEYS[3]
local owner, lease, attempt = ARGV[1], ARGV[2], ARGV[3]
local instance, will_wait, more, keep_line, queued = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]

-- The next fencing token: one more than the last. If the counter is gone
-- (Redis lost its data: a restart without persistence), INCR would start
-- again at 1 while ticket rows remember higher tokens and would refuse every
-- sale; so a new counter starts from the server's clock in microseconds,
-- which is above every earlier token as long as fewer than a million holds
-- are taken per second. (Lua numbers are doubles: exact up to 2^53, which
-- microseconds since 1970 stay below for two more centuries. string.format
-- keeps Redis from turning a big number into "1.7e+15".)
--
-- The clock only helps when the counter is gone. When it merely went back
-- (a restart from an older snapshot, a failover to a replica that had not
-- caught up), INCR hands out numbers it has handed out before. So the
-- tokens' order is finally kept by the database: a ticket row accepts only a
-- token above the one that wrote it last, and the holder it refuses raises
-- the counter above that one (floor.lua).
local function next_token()
  local token = redis.call('INCR', counter)
  if token == 1 then
    local now = redis.call('TIME')
    token = tonumber(now[1]) * 1000000 + tonumber(now[2])
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

-- The caller takes the free lock: a count of 1, a fresh token, a lease.
local function take()
  local token = next_token()
  redis.call('HSET', lock, owner, 1, 'fence', string.format('%d', token), 'attempt-' .. attempt, 1)
  redis.call('PEXPIRE', lock, lease)
  -- Served: leave the line, and rejoin at the back if more of our process's
  -- tasks are waiting, so that processes take turns.
  if queued == '1' then
    redis.call('LREM', line, 0, instance)
  end
  if more == '1' then
    join_line()
  end
  return {1, token}
end

if redis.call('EXISTS', lock) == 0 then
  return take()
end

local held = redis.call('HMGET', lock, owner, 'fence', 'grant')

-- Already the caller's: count one more hold. The token stays the same: it
-- names the whole hold, not each nested acquisition, so an outer write is
-- never refused because of an inner one. The lease may grow to this
-- attempt's, but never shrinks ('GT'): the outer guard still believes in
-- its own, longer lease, and must not find the key gone before it ends.
if held[1] then
  redis.call('HSET', lock, owner, tonumber(held[1]) + 1, 'attempt-' .. attempt, 1)
  redis.call('PEXPIRE', lock, lease, 'GT')
  return {1, tonumber(held[2])}
end

-- Handed to the caller's process by the last release: claim it.
if held[3] == instance then
  redis.call('DEL', lock)
  return take()
end

-- Someone else's, or handed to another process: not ours to take, no
-- barging past the line. Say how long that lasts at most, which is the
-- longest a waiter ever needs to sleep before looking again.
if will_wait == '1' then
  join_line()
end
return {0, redis.call('PTTL', lock)}
