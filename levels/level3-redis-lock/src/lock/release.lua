-- Give back one hold of the lock; on the last one, hand it to the next
-- process in line and tell the waiters.
--
-- KEYS[1]  the lock hash
-- KEYS[2]  the line of waiting processes
-- KEYS[3]  this release's receipt: written when this release frees the lock,
--          so that a repeat can tell "I freed it" from "it was gone"
-- ARGV[1]  the owner releasing
-- ARGV[2]  the fencing token of the hold being released, or '' for "any hold
--          of this owner". A guard passes its token: if its hold already
--          ended and the same owner has taken the lock afresh since (a new
--          token), a late release from the old guard must not end the new hold
-- ARGV[3]  this release's id: the same for every send of one release
-- ARGV[4]  '1' when this is a repeat send (the first one's reply was lost)
-- ARGV[5]  how long the receipt is kept, in milliseconds: longer than all
--          the repeats of one release can take
-- ARGV[6]  the channel waiters listen on
-- ARGV[7]  how long the next process has to claim the lock, in milliseconds
-- ARGV[8]  the releasing process's instance id if it has tasks waiting for
--          this lock too (they go to the back of the line), else ''
-- ARGV[9]  '1' on a Redis Cluster: announce with SPUBLISH (see hand_on.lua)
--
-- Returns  1  released: the lock is free, or handed to the next in line
--          0  still held: this owner took it more than once (reentrancy)
--         -1  not held by this owner (with this token): nothing was changed.
--             The hold was lost (its lease ran out), or never existed.

local lock, line, receipt = KEYS[1], KEYS[2], KEYS[3]
local owner, token, id, repeated = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local keep_receipt, channel, grant_ms, requeue, sharded = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]

-- Never delete a lock that is not ours: after our lease ran out, the key may
-- belong to the next buyer. Refuse, and let the caller say so. A repeat of a
-- final release that did run lands here too: its receipt says so.
local held = redis.call('HMGET', lock, owner, 'fence')
local count = tonumber(held[1])
if not count or (token ~= '' and held[2] ~= token) then
  if repeated == '1' and redis.call('EXISTS', receipt) == 1 then
    return 1
  end
  return -1
end

-- A repeat of a release that already took its hold away (and left holds
-- behind): answer as the first send did.
local done = 'released-' .. id
if repeated == '1' and redis.call('HEXISTS', lock, done) == 1 then
  return 0
end

-- An outer hold remains: take one hold away and remember that this release
-- did (so that a repeat does not take a second one). The lease is left as it
-- is: the outer guard believes in it, and giving a hold back needs no more
-- time.
if count > 1 then
  redis.call('HSET', lock, owner, count - 1, done, 1)
  return 0
end

-- The last hold: the lock is free. Hand it to the process that has waited
-- longest (our own waiters queue behind everyone else): see hand_on.lua.
-- The receipt costs one call, and is what lets a repeat of this release
-- answer "released" rather than "lost".
hand_on(lock, line, channel, grant_ms, requeue, sharded)
redis.call('SET', receipt, 1, 'PX', keep_receipt)
return 1
