-- postpone: give back a claimed task this worker cannot import yet (a rolling deploy:
-- the task is newer than this worker's code), due again after a backoff. The claim is
-- undone as if it never happened here: no attempt, no delivery, this worker leaves
-- worker_ids. The first postponement's time is kept, so the worker can give up after
-- a bounded wait.
-- KEYS[1] task hash   KEYS[2] running zset   KEYS[3] scheduled zset   KEYS[4] wake list
-- ARGV[1] task id   ARGV[2] delivery token ("<worker id>#<fence>")   ARGV[3] delay in ms
-- ARGV[4] wake list cap
-- Returns the due time in ms since the epoch, or 0 when the lease was lost.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local due = math.floor(now_us / 1000) + tonumber(ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'READY', 'done_by', ARGV[2])
redis.call('HSETNX', KEYS[1], 'unknown_since', string.format('%.0f', now_us))
redis.call('HDEL', KEYS[1], 'owner')
redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
undo_attempt(KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], string.format('%.0f', due), ARGV[1])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
return due
