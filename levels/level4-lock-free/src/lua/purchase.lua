-- One purchase, decided entirely inside Redis.
--
-- Redis runs a script from its first line to its last with no other command
-- in between, on any connection. "Is this buyer new? Is there stock? Then
-- take one, remember the buyer, and queue the order" therefore cannot be
-- split by another buyer: there is no window between the check and the
-- write, so there is nothing to lock.
--
-- KEYS[1]  sale hash      {epoch, total, stock}
-- KEYS[2]  buyers hash    user id -> order id
-- KEYS[3]  orders stream  what the persistence worker writes to PostgreSQL
-- KEYS[4]  the last order id handed out
-- KEYS[5]  idempotency hash  '<user id>:<idempotency key>' -> the order id
--          sold under it
-- ARGV[1]  ticket id
-- ARGV[2]  user id
-- ARGV[3]  the request's idempotency key, or '' for none
--
-- Returns {outcome, order id}:
--   {'sold', id}               sold: the sale is decided, and queued
--   {'resold', id}             this very request (same buyer, same
--                              idempotency key) was sold this order before,
--                              and its answer was lost: answer it again,
--                              spending nothing (even if cancelled since)
--   {'already_purchased', id}  this buyer already holds the ticket (order id)
--   {'sold_out', '0'}
--   {'not_loaded', '0'}        Redis holds no sale for this ticket yet, or
--                              only one a reset has closed (fence.lua), or
--                              one this Redis process has not checked
--                              against PostgreSQL (load.lua)
--
-- Ids travel as strings: Lua's numbers are doubles, and a double printed by
-- Redis may come out as 1.7e+15. string.format('%d') keeps every digit.

local sale = redis.call('HMGET', KEYS[1], 'epoch', 'stock', 'fence', 'checked_by')
local epoch = sale[1]
if not epoch then
  return {'not_loaded', '0'}
end
-- Was this sale loaded, or checked against PostgreSQL, by this very Redis
-- process? Each start of redis-server draws a new run_id. A Redis that
-- restarted from an RDB snapshot or an AOF missing its last second, or a
-- replica promoted after a failover, holds the sale as it was some time
-- ago: the current epoch, but too much stock and too few buyers. Selling
-- from it would sell units PostgreSQL already holds orders for. So it
-- answers nothing until load.lua has compared it with PostgreSQL and
-- signed it with this run_id. The price: one INFO per purchase.
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if sale[4] ~= run_id then
  return {'not_loaded', '0'}
end
-- A reset has closed this sale (fence.lua): the ticket is being put on sale
-- again. Sell nothing more from the old sale; the caller loads the new one.
if sale[3] and tonumber(sale[3]) > tonumber(epoch) then
  return {'not_loaded', '0'}
end

-- A key answers one order, ever. This very request may have sold before:
-- a first try whose answer never reached PostgreSQL (its server died, or
-- its Redis reply timed out). The key was written with that sale, so this
-- is known, not guessed: answer that order again, spending nothing, even if
-- it has been cancelled since (the retry asks for the same purchase, not a
-- new one). Keys are scoped by buyer: another buyer's key of the same name
-- is another request.
local scoped_key = ARGV[2] .. ':' .. ARGV[3]
if ARGV[3] ~= '' then
  local keyed = redis.call('HGET', KEYS[5], scoped_key)
  if keyed then
    return {'resold', keyed}
  end
end

-- The duplicate check comes before the stock: a buyer's second click must
-- never spend a unit.
local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then
  return {'already_purchased', held}
end

if tonumber(sale[2]) <= 0 then
  return {'sold_out', '0'}
end

-- The order id: the clock in microseconds, or one more than the last id
-- when the clock has not moved past it (two sales in one microsecond, or a
-- clock set back). If Redis ever forgets its last second of writes
-- (appendfsync everysec and a machine crash), the last id goes back with
-- it; the clock has moved on by then, so the new ids are still new. They
-- are far above anything PostgreSQL's BIGSERIAL hands the other levels
-- (10^15 rows away), so the two never collide in ticket_orders.
-- SET ... GET writes the clock and returns the previous id in one call.
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local id = now_us
local previous = tonumber(redis.call('SET', KEYS[4], string.format('%d', now_us), 'GET') or '0')
if previous >= now_us then
  id = previous + 1
  redis.call('SET', KEYS[4], string.format('%d', id))
end
local order = string.format('%d', id)

redis.call('HINCRBY', KEYS[1], 'stock', -1)
redis.call('HSET', KEYS[2], ARGV[2], order)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[5], scoped_key, order)
end
redis.call('XADD', KEYS[3], '*',
  'order', order,
  'ticket', ARGV[1],
  'user', ARGV[2],
  'epoch', epoch,
  'sold_us', string.format('%d', now_us))
return {'sold', order}
