-- Raise the fencing counter to at least a token the database has seen.
--
-- The counter lives in Redis, and Redis can lose its newest writes: a
-- restart from an older snapshot, or a failover to a replica that had not
-- caught up. The counter then goes back, and `acquire.lua` hands out
-- numbers it has handed out before. The database refuses those (a row only
-- accepts a token *above* the one that wrote it last), and the holder that
-- was refused sends this, so that the next hold's token is above anything
-- the database has seen, and sales go on after one refusal instead of one
-- refusal per reissued number.
--
-- KEYS[1]  the lock's fencing counter
-- ARGV[1]  the largest token the database has accepted (as seen by the
--          refused holder)
--
-- Returns 1 when the counter was raised, 0 when it was already as high.

local counter = tonumber(redis.call('GET', KEYS[1]) or '0')
if counter < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
