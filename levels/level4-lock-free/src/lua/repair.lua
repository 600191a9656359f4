-- Reconcile's repair of a sale in Redis, atomic against purchases.
--
-- Adds the buyers PostgreSQL holds but Redis forgot (Redis lost writes that
-- the worker had already persisted: appendfsync everysec and a crash), then
-- recomputes the stock from the buyers, so that the next purchase cannot sell
-- a unit that is already sold.
--
-- KEYS[1]  sale hash
-- KEYS[2]  buyers hash
-- KEYS[3]  order id counter
-- ARGV[1]  epoch the repair was computed for
-- ARGV[2]  the highest order id PostgreSQL holds
-- ARGV[3], ARGV[4], ...  user id, order id pairs to add
--
-- Returns the new stock, or -1 when the sale changed epoch meanwhile (nothing
-- was touched).

if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return -1
end
for i = 3, #ARGV, 2 do
  redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local stock = total - redis.call('HLEN', KEYS[2])
if stock < 0 then
  stock = 0
end
redis.call('HSET', KEYS[1], 'stock', stock)
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
if last < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[3], ARGV[2])
end
return stock
