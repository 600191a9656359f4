-- Gives seats back: each seat is deleted only if this hold still owns it,
-- so a late or repeated free never takes a seat from its next buyer.
--
-- KEYS[1]  the show's seat owners (seat number -> hold id)
-- ARGV[1]  the hold's id; ARGV[2..] its seats
local freed = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    freed = freed + 1
  end
end
return freed
