-- Loads a show's seat owners from PostgreSQL, once: if another server
-- loaded it first, nothing is written.
--
-- KEYS[1]  the show's seat owners (seat number -> hold id)
-- KEYS[2]  the show's "loaded" marker
-- ARGV     seat, hold id, seat, hold id, ... (the seats taken in PostgreSQL)
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[2], '1')
return 1
