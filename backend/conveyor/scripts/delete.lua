-- delete: an operator's delete of one task that no worker holds (READY, SUCCESSFUL or
-- FAILED), with its entries in its queue's sets; a RUNNING task is refused (cancel it).
-- KEYS[1] task hash   KEYS[2] ready zset   KEYS[3] ready-since zset   KEYS[4] scheduled zset
-- KEYS[5] failed index   KEYS[6] succeeded index
-- ARGV[1] task id
-- Returns 'deleted', 'running' or 'missing'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'RUNNING' then
  return 'running'
end
redis.call('DEL', KEYS[1])
for i = 2, 6 do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 'deleted'
