-- The waiting room's one rule, shared by every script (each script is this
-- file followed by its own body; Redis runs a whole script at a time).
--
-- advance(base, limit, ttl): with Redis's own clock, expire the admitted
-- users whose time ran out, then admit the lowest numbers waiting until
-- `limit` are admitted. Whichever server runs a script moves the queue:
-- no server is "the admitter", so killing one stops nothing.
--
-- Keys under `base` (level5:<db>:q:{show:<id>}, the show its hash tag):
--   :seq      INCR, the show's arrival numbers (one sequence, all servers)
--   :waiting  zset number -> number: who waits, in arrival order
--   :active   zset number -> deadline ms: admitted and not finished
--   :e:<n>    hash user, secret, state (waiting|admitted|finished|expired)
--   :users    hash user -> number (a second join gets the same token)
--   :admits   zset number -> admitted-at ms, the last WINDOW ms (the rate)
--   :log      list of admitted numbers, in admission order (for checks)
--   :stats    hash admitted, finished, expired, max_active
local WINDOW = 10000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function advance(base, limit, ttl)
  local now = now_ms()
  local active = base .. ':active'
  local stats = base .. ':stats'
  local gone = redis.call('ZRANGEBYSCORE', active, '-inf', now)
  if #gone > 0 then
    for _, n in ipairs(gone) do
      redis.call('HSET', base .. ':e:' .. n, 'state', 'expired')
    end
    redis.call('ZREMRANGEBYSCORE', active, '-inf', now)
    redis.call('HINCRBY', stats, 'expired', #gone)
  end
  local free = limit - redis.call('ZCARD', active)
  if free > 0 then
    -- ZPOPMIN: the lowest numbers, so admission is strictly in order.
    local head = redis.call('ZPOPMIN', base .. ':waiting', free)
    local count = #head / 2
    for i = 1, #head, 2 do
      local n = head[i]
      redis.call('ZADD', active, now + ttl, n)
      redis.call('HSET', base .. ':e:' .. n, 'state', 'admitted')
      redis.call('ZADD', base .. ':admits', now, n)
      redis.call('RPUSH', base .. ':log', n)
    end
    if count > 0 then
      redis.call('HINCRBY', stats, 'admitted', count)
      local size = redis.call('ZCARD', active)
      local max = tonumber(redis.call('HGET', stats, 'max_active') or '0')
      if size > max then
        redis.call('HSET', stats, 'max_active', size)
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', base .. ':admits', '-inf', now - WINDOW)
  return now
end

-- What a client is told about entry `n`: state, position (1 = next in
-- line, 0 when not waiting) and admissions in the last WINDOW ms.
local function describe(base, n, state)
  local position = 0
  if state == 'waiting' then
    position = redis.call('ZRANK', base .. ':waiting', n) + 1
  end
  return {state, position, redis.call('ZCARD', base .. ':admits')}
end
