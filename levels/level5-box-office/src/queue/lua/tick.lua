-- tick: ARGV prefix, limit, ttl, shows-set
-- Moves every show's queue once: the idle expire and the next are
-- admitted even when no request comes. Every server ticks.
local prefix, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local shows = redis.call('SMEMBERS', ARGV[4])
for _, show in ipairs(shows) do
  advance(prefix .. ':q:' .. show, limit, ttl)
end
return #shows
