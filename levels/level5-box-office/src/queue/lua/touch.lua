-- touch: ARGV base, limit, ttl, number
-- The user did something (a hold): their idle time starts again. Only an
-- admitted user can be touched; returns the state after moving the queue.
local base, limit, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = advance(base, limit, ttl)
local state = redis.call('HGET', base .. ':e:' .. n, 'state')
if state == 'admitted' then
  redis.call('ZADD', base .. ':active', 'XX', now + ttl, n)
end
return state or ''
