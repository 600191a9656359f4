-- Give back one hold of the lock; on the last one, hand it to the next
-- process in line and tell the waiters.
--
-- KEYS[1]  the lock hash
-- KEYS[2]  this release's receipt: remembers the answer for a few seconds, so
--          that sending the same release again (its reply was lost, the client
--          retried) returns the same answer instead of releasing twice
-- KEYS[3]  the line of waiting processes
-- KEYS[4]  the grant
-- ARGV[1]  the owner releasing
-- ARGV[2]  the channel waiters listen on
-- ARGV[3]  the lease to re-arm when holds remain, in milliseconds
-- ARGV[4]  how long to keep the receipt, in milliseconds
-- ARGV[5]  the fencing token of the hold being released, or '' for "any hold
--          of this owner". A guard passes its token: if its hold already
--          ended and the same owner has taken the lock afresh since (a new
--          token), a late release from the old guard must not end the new hold
-- ARGV[6]  how long the next process has to claim the lock, in milliseconds
--
-- Returns  1  released: the key is gone and a message was published
--          0  still held: this owner took it more than once (reentrancy)
--         -1  not held by this owner: nothing was changed

local lock, receipt, line, grant = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner, channel, lease, keep, token, grant_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

-- A retry of a release that already happened: answer as the first time did.
local earlier = redis.call('GET', receipt)
if earlier then
  return tonumber(earlier)
end

-- Never delete a lock that is not ours: after our lease ran out, the key may
-- belong to the next buyer. Refuse, and let the caller say so.
if redis.call('HEXISTS', lock, owner) == 0 then
  return -1
end
if token ~= '' and redis.call('HGET', lock, 'fence') ~= token then
  return -1
end

local result
if redis.call('HINCRBY', lock, owner, -1) > 0 then
  -- An outer hold remains: keep the lock, give it a full lease again.
  redis.call('PEXPIRE', lock, lease)
  result = 0
else
  -- The last hold: the lock is free. Hand it to the process that has waited
  -- longest, for a short while, and say so on the channel: that process
  -- wakes one of its waiters, the others know to keep sleeping. With nobody
  -- in line, the message is empty: anyone may take it.
  redis.call('DEL', lock)
  local next = redis.call('LPOP', line)
  if next then
    redis.call('SET', grant, next, 'PX', grant_ms)
    redis.call('PUBLISH', channel, next)
  else
    redis.call('PUBLISH', channel, '')
  end
  result = 1
end
redis.call('SET', receipt, result, 'PX', keep)
return result
