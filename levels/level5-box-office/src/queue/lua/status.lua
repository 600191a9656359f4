-- status: ARGV base, limit, ttl, number
-- Moves the queue, then returns {user, secret, state, position,
-- recent_admits}, or an empty list when there is no such entry.
local base, limit, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
advance(base, limit, ttl)
local entry = base .. ':e:' .. n
local fields = redis.call('HMGET', entry, 'user', 'secret', 'state')
if not fields[1] then
  return {}
end
local d = describe(base, n, fields[3])
return {fields[1], fields[2], d[1], d[2], d[3]}
