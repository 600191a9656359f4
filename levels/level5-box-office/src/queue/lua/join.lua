-- join: ARGV base, limit, ttl, user, secret
-- (The caller adds the show to the set of shows with lines afterwards: that
-- set spans every show, so on a Redis Cluster it lives in another slot.)
-- Returns {number, secret, state, position, recent_admits, created (1|0)}.
local base, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local user, secret = ARGV[4], ARGV[5]
advance(base, limit, ttl)
local existing = redis.call('HGET', base .. ':users', user)
if existing then
  local entry = base .. ':e:' .. existing
  local state = redis.call('HGET', entry, 'state')
  if state == 'waiting' or state == 'admitted' then
    local d = describe(base, existing, state)
    return {tonumber(existing), redis.call('HGET', entry, 'secret'), d[1], d[2], d[3], 0}
  end
end
-- A new arrival (or one whose last turn is over): the next number.
local n = redis.call('INCR', base .. ':seq')
redis.call('HSET', base .. ':e:' .. n, 'user', user, 'secret', secret, 'state', 'waiting')
redis.call('HSET', base .. ':users', user, n)
redis.call('ZADD', base .. ':waiting', n, n)
advance(base, limit, ttl)
local state = redis.call('HGET', base .. ':e:' .. n, 'state')
local d = describe(base, n, state)
return {n, secret, d[1], d[2], d[3], 1}
