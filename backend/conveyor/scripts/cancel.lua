-- cancel: an operator's cancel of one task. A READY task (ready or waiting) never starts:
-- it is FAILED at once with a TaskCancelled error. A RUNNING task is marked ("cancel"):
-- its worker learns it at the next renewal and stops it, and any later claim of it (after
-- a worker loss or a shutdown) fails it unstarted. A claim and a cancel are both one
-- script, so exactly one of them sees the task READY.
-- KEYS[1] task hash   KEYS[2] ready zset   KEYS[3] ready-since zset   KEYS[4] scheduled zset
-- KEYS[5] failed index   KEYS[6] counter of cancel requests (workers poll it)
-- KEYS[7] the task's done list (waiters block on it)
-- ARGV[1] task id   ARGV[2] failed result TTL in seconds   ARGV[3] who asked (for the message)
-- ARGV[4] the done channel   ARGV[5] done list TTL in ms
-- Returns 'cancelled', 'requested', 'finished' or 'missing'.
local record = redis.call('HMGET', KEYS[1], 'status', 'waited')
local status = record[1]
if not status then
  return 'missing'
end
if status == 'SUCCESSFUL' or status == 'FAILED' then
  return 'finished'
end
local t = redis.call('TIME')
local now_us = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
if status == 'RUNNING' then
  redis.call('HSETNX', KEYS[1], 'cancel', now_us)
  redis.call('INCR', KEYS[6])
  return 'requested'
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local message = 'conveyor.exceptions.TaskCancelled: cancelled by ' .. ARGV[3] .. ' before it started\n'
local err = cjson.encode({exception_class_path = 'conveyor.exceptions.TaskCancelled', traceback = message})
local errors = json_list_append(redis.call('HGET', KEYS[1], 'errors'), err)
redis.call('HSET', KEYS[1], 'status', 'FAILED', 'errors', errors, 'finished_at', now_us, 'cancel', now_us)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[5], time_ms_text(t), ARGV[1])
if record[2] then
  notify_done(KEYS[7], ARGV[4], ARGV[5], ARGV[1])
end
return 'cancelled'
