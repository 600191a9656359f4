-- Puts a cancelled order's unit back on sale in Redis.
--
-- Runs after PostgreSQL has committed the cancellation (cancel.rs): a
-- failure between the two leaves the unit unsold, never sold twice.
--
-- KEYS[1]  sale hash
-- KEYS[2]  buyers hash
-- ARGV[1]  epoch of the sale the order belongs to
-- ARGV[2]  user id
-- ARGV[3]  order id
--
-- Returns 1 when the unit went back, 0 when there was nothing to do (a
-- repeated cancel, or a sale that has since been reset).

if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return 0
end
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'stock', 1)
return 1
