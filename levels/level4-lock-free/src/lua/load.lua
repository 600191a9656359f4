-- Puts a sale into Redis, once; or checks, once per Redis process, that the
-- sale Redis holds has not gone back in time.
--
-- Called after PostgreSQL has decided which sale (epoch) of the ticket is
-- current (see load.rs), under the ticket's row lock. Several servers may
-- call it for the same epoch, each with what it read from PostgreSQL: the
-- first one loads, the others find the epoch already there and change
-- nothing. "Exactly once per sale" is this comparison: sales made since the
-- first load are never overwritten by a later, staler copy of the same sale.
--
-- The check: the sale hash is signed with the run_id of the Redis process
-- that loaded it (`checked_by`), and purchase.lua sells only from a sale
-- signed by the process it runs in. A Redis that restarted from an old
-- snapshot (or a replica promoted after a failover) holds the current epoch
-- with an unsigned past: the buyers it forgot, and the stock they took, may
-- already be rows in PostgreSQL. The orders PostgreSQL holds are put back
-- among the buyers (a buyer Redis still knows keeps its entry), the stock
-- is recomputed from the buyers (never raised), and the sale is signed.
-- Sales Redis still holds and PostgreSQL does not yet (their stream entries
-- came back with the snapshot) stay: the worker persists them.
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
-- Returns {outcome, n}: {1, 0} when this call loaded the sale; {2, n} when
-- it checked a sale this Redis process had not signed, and put back n
-- buyers Redis had forgotten; {0, 0} when there was nothing to do.

local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local sale = redis.call('HMGET', KEYS[1], 'epoch', 'fence', 'checked_by', 'stock', 'total')
local current = tonumber(sale[1] or '0')
local epoch = tonumber(ARGV[1])
if current > epoch then
  return {0, 0}
end
-- A reset has fenced off every epoch below its own (fence.lua): a loader
-- that read PostgreSQL just before that reset must not bring the closed sale
-- back.
local fence = tonumber(sale[2] or '0')
if epoch < fence then
  return {0, 0}
end

-- Never hand out an id PostgreSQL already holds.
local function raise_order_id()
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  if last < tonumber(ARGV[4]) then
    redis.call('SET', KEYS[3], ARGV[4])
  end
end

if current == epoch then
  if sale[3] == run_id then
    return {0, 0}
  end
  local restored = 0
  for i = 5, #ARGV, 2 do
    restored = restored + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  local stock = tonumber(sale[5]) - redis.call('HLEN', KEYS[2])
  stock = math.max(0, math.min(stock, tonumber(sale[4])))
  redis.call('HSET', KEYS[1], 'stock', stock, 'checked_by', run_id)
  raise_order_id()
  return {2, restored}
end

redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'total', ARGV[2], 'stock', ARGV[3],
  'checked_by', run_id)
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
raise_order_id()
return {1, 0}
