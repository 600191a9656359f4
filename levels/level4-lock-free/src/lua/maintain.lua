-- Housekeeping of the orders stream, atomic so that nothing moves in between.
--
-- 1. Trim: every entry older than both the oldest pending entry and the last
--    entry delivered to the group has been persisted (or dead-lettered) and
--    acknowledged, and nobody will read it again. XTRIM MINID drops them.
-- 2. Forget dead consumers: a consumer idle longer than ARGV[2] ms with no
--    pending entry is a worker that stopped. XGROUP DELCONSUMER would drop
--    its pending entries too, which is why only empty ones are removed, here,
--    where no read can slip in between the check and the removal.
--
-- KEYS[1]  orders stream
-- ARGV[1]  group
-- ARGV[2]  idle ms after which an empty consumer is forgotten
--
-- Returns {entries trimmed, consumers removed}.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0}
end

local last_delivered = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #group, 2 do
    fields[group[i]] = group[i + 1]
  end
  if fields['name'] == ARGV[1] then
    last_delivered = fields['last-delivered-id']
  end
end
if not last_delivered then
  return {0, 0}
end

local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local low = last_delivered
if summary[1] > 0 then
  low = summary[2]
end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', low)

local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do
    fields[consumer[i]] = consumer[i + 1]
  end
  if fields['pending'] == 0 and fields['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    removed = removed + 1
  end
end
return {trimmed, removed}
