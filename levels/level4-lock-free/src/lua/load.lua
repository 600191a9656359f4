-- Puts a sale into Redis, once.
--
-- Called after PostgreSQL has decided which sale (epoch) of the ticket is
-- current (see load.rs). Several servers may call it at once for the same
-- epoch, each with what it read from PostgreSQL: the first one loads, the
-- others find the epoch already there and change nothing. "Exactly once per
-- sale" is this comparison: sales made since the first load are never
-- overwritten by a later, staler copy of the same sale.
--
-- KEYS[1]  sale hash
-- KEYS[2]  buyers hash
-- KEYS[3]  order id counter
-- KEYS[4]  idempotency hash (a new sale starts without the old one's keys)
-- ARGV[1]  epoch
-- ARGV[2]  total
-- ARGV[3]  stock
-- ARGV[4]  the highest order id PostgreSQL holds (0: none)
-- ARGV[5], ARGV[6], ...  user id, order id: the orders PostgreSQL already holds
--
-- Returns 1 when this call loaded the sale, 0 when it was already loaded.

local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if current >= tonumber(ARGV[1]) then
  return 0
end
-- A reset has fenced off every epoch below its own (fence.lua): a loader
-- that read PostgreSQL just before that reset must not bring the closed sale
-- back.
local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < fence then
  return 0
end

redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'total', ARGV[2], 'stock', ARGV[3])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end

-- Never hand out an id PostgreSQL already holds.
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
if last < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[3], ARGV[4])
end
return 1
