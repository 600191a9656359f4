-- Give back one hold of the lock; on the last one, hand it to the next
-- process in line and tell the waiters.
--
-- KEYS[1]  the lock hash
-- KEYS[2]  the line of waiting processes
-- ARGV[1]  the owner releasing
-- ARGV[2]  the fencing token of the hold being released, or '' for "any hold
--          of this owner". A guard passes its token: if its hold already
--          ended and the same owner has taken the lock afresh since (a new
--          token), a late release from the old guard must not end the new hold
-- ARGV[3]  this release's id: the same for every send of one release
-- ARGV[4]  '1' when this is a repeat send (the first one's reply was lost)
-- ARGV[5]  the lease to re-arm when holds remain, in milliseconds
-- ARGV[6]  the channel waiters listen on
-- ARGV[7]  how long the next process has to claim the lock, in milliseconds
-- ARGV[8]  the releasing process's instance id if it has tasks waiting for
--          this lock too (they go to the back of the line), else ''
--
-- Returns  1  released: the lock is free, or handed to the next in line
--          0  still held: this owner took it more than once (reentrancy)
--         -1  not held by this owner (with this token): nothing was changed

local lock, line = KEYS[1], KEYS[2]
local owner, token, id, repeated = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lease, channel, grant_ms, requeue = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

-- Never delete a lock that is not ours: after our lease ran out, the key may
-- belong to the next buyer. Refuse, and let the caller say so. (A repeat of
-- a final release that did run lands here too: the client knows it repeated
-- itself and reads this as "released".)
local held = redis.call('HMGET', lock, owner, 'fence')
local count = tonumber(held[1])
if not count or (token ~= '' and held[2] ~= token) then
  return -1
end

-- A repeat of a release that already took its hold away (and left holds
-- behind): answer as the first send did.
local done = 'released:' .. id
if repeated == '1' and redis.call('HEXISTS', lock, done) == 1 then
  return 0
end

-- An outer hold remains: take one hold away, remember that this release
-- did (so that a repeat does not take a second one), renew the lease.
if count > 1 then
  redis.call('HSET', lock, owner, count - 1, done, 1)
  redis.call('PEXPIRE', lock, lease)
  return 0
end

-- The last hold: the lock is free. Hand it to the process that has waited
-- longest (our own waiters queue behind everyone else): see hand_on.lua.
hand_on(lock, line, channel, grant_ms, requeue)
return 1
