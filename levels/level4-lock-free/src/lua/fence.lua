-- Closes a ticket's sale in Redis before PostgreSQL puts the ticket on sale
-- again (reset.rs), or lifts a fence whose reset never committed (load.rs).
--
-- A fence is the lowest epoch Redis may sell from. Any sale hash whose epoch
-- is below it is closed: purchase.lua answers `not_loaded` instead of
-- selling, and load.lua refuses to load an epoch below it. Loading a newer
-- sale replaces the whole hash, fence included.
--
-- KEYS[1]  sale hash
-- ARGV[1]  'raise' or 'lift'
-- ARGV[2]  raise: the new fence (an epoch no sale has yet)
--          lift: the epoch PostgreSQL names current, under its row lock,
--          with the ticket loaded (version > 0): a fence above it was
--          raised by a reset that rolled back
--
-- Returns 1 when the fence changed, 0 otherwise.

local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
local epoch = tonumber(ARGV[2])
if ARGV[1] == 'raise' then
  if fence < epoch then
    redis.call('HSET', KEYS[1], 'fence', ARGV[2])
    return 1
  end
  return 0
end
if fence > epoch then
  redis.call('HDEL', KEYS[1], 'fence')
  return 1
end
return 0
