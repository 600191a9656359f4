-- finish: ARGV base, limit, ttl, number
-- A payment finished this user: the place goes to the next in line.
local base, limit, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
advance(base, limit, ttl)
local entry = base .. ':e:' .. n
if redis.call('HGET', entry, 'state') == 'admitted' then
  redis.call('ZREM', base .. ':active', n)
  redis.call('HSET', entry, 'state', 'finished')
  redis.call('HINCRBY', base .. ':stats', 'finished', 1)
end
advance(base, limit, ttl)
return redis.call('HGET', entry, 'state') or ''
