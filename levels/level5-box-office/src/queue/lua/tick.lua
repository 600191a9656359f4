-- tick: ARGV base, limit, ttl
-- Moves one show's queue once: the idle expire and the next are admitted
-- even when no request comes. Every server ticks every show (the Rust side
-- lists the shows and runs this once per show: on a Redis Cluster each
-- show's keys live on the master of its hash tag, so one script cannot
-- move them all).
advance(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
