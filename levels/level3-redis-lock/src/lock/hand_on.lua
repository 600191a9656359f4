-- Hand a lock that has just become free to the next process in line.
--
-- Shared by release.lua, abandon.lua and pass.lua: the Rust side puts this
-- file in front of each of them, so that all three hand the lock on in
-- exactly the same way.
--
-- lock      the lock hash; its hold has ended (it is deleted here)
-- line      the line of waiting processes
-- channel   the channel waiters listen on
-- grant_ms  how long the next process has to claim the lock, in milliseconds
-- requeue   the instance id of the process handing the lock on if it has
--           tasks waiting for this lock too (they go to the back of the
--           line), else ''
-- sharded   '1' on a Redis Cluster: announce with SPUBLISH, which goes to
--           the subscribers of the master that owns the channel's slot
--           (the lock's slot: the channel carries the lock's hash tag),
--           instead of PUBLISH, which a cluster copies to every node
--
-- The next process is granted the lock for a short while and named on the
-- channel: it wakes one of its waiters, the others know to keep sleeping.
local function hand_on(lock, line, channel, grant_ms, requeue, sharded)
  redis.call('DEL', lock)
  if requeue ~= '' and not redis.call('LPOS', line, requeue) then
    redis.call('RPUSH', line, requeue)
  end
  local next = redis.call('LPOP', line)
  if next then
    redis.call('HSET', lock, 'grant', next)
    redis.call('PEXPIRE', lock, grant_ms)
    redis.call(sharded == '1' and 'SPUBLISH' or 'PUBLISH', channel, next)
  end
end

