-- delete: an operator's delete of one task that no worker holds (READY, SUCCESSFUL or
-- FAILED), with its entries in its queue's sets; a RUNNING task is refused (cancel it).
-- KEYS[1] task hash   KEYS[2] ready zset   KEYS[3] ready-since zset   KEYS[4] scheduled zset
-- KEYS[5] failed index   KEYS[6] succeeded index   KEYS[7] the task's done list
-- ARGV[1] task id   ARGV[2] the done channel   ARGV[3] done list TTL in ms
-- Waiters of a deleted unfinished task are woken, to find it gone.
-- Returns 'deleted', 'running' or 'missing'.
local record = redis.call('HMGET', KEYS[1], 'status', 'waited')
local status = record[1]
if not status then
  return 'missing'
end
if status == 'RUNNING' then
  return 'running'
end
redis.call('DEL', KEYS[1])
if record[2] and status == 'READY' then
  notify_done(KEYS[7], ARGV[2], ARGV[3], ARGV[1])
end
for i = 2, 6 do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 'deleted'
