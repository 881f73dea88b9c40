-- requeue: an operator's retry of a FAILED task: READY again at the back of its queue,
-- keeping its id, errors and worker ids; it gets one more attempt and a fresh budget of
-- deliveries. Only a FAILED task moves, so this never races a worker: no worker holds it.
-- KEYS[1] task hash   KEYS[2] ready zset   KEYS[3] ready-since zset   KEYS[4] failed index
-- KEYS[5] sequence counter   KEYS[6] wake list
-- KEYS[7] the task's done list (its token from the failure goes: the task is not done now)
-- ARGV[1] task id   ARGV[2] wake list cap
-- Returns 'retried', 'not_failed' or 'missing'.
local record = redis.call('HMGET', KEYS[1], 'status', 'priority')
if not record[1] then
  return 'missing'
end
if record[1] ~= 'FAILED' then
  return 'not_failed'
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = ready_score(record[2] or '0', redis.call('INCR', KEYS[5]))
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PERSIST', KEYS[1])
redis.call('DEL', KEYS[7])
redis.call('HDEL', KEYS[1], 'finished_at', 'result', 'cancel', 'lost', 'unknown_since')
redis.call('HSET', KEYS[1], 'status', 'READY', 'score', score, 'deliveries', '0')
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('ZADD', KEYS[3], now_ms, ARGV[1])
if redis.call('LPUSH', KEYS[6], '1') > tonumber(ARGV[2]) then
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[2]) - 1)
end
return 'retried'
