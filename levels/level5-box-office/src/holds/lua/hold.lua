-- Holds seats for one hold, all or none, in one step nobody can interleave.
--
-- KEYS[1]  the show's seat owners: a hash, seat number -> hold id
-- KEYS[2]  the show's "loaded from PostgreSQL" marker
-- ARGV[1]  the new hold's id; ARGV[2..] the seats
--
-- Returns {1} when held, {0, seat, seat...} with the taken seats when not,
-- and {-1} when the show is not in Redis yet (the caller loads it and asks
-- again).
--
-- Redis runs one script at a time: between the checks and the writes below
-- no other buyer's script can run. That is the whole concurrency control.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {-1}
end
local taken = {0}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    taken[#taken + 1] = tonumber(ARGV[i])
  end
end
if #taken > 1 then
  return taken
end
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
end
return {1}
