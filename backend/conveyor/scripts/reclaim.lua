-- reclaim: return tasks whose lease expired (their worker died) to their ready queue,
-- or fail them once they have been delivered too often (a poison pill).
-- KEYS[1] task key prefix (the script appends a task id to it)
-- KEYS[2] reclaim state hash: "tick" (server ms of the last reclaim call by any worker)
--         and "hold" (server ms before which nothing is reclaimed)
-- KEYS[3] done list prefix (the script appends a task id to it; waiters block on it)
-- For queue i = 0..n-1: KEYS[4+5i] running zset, KEYS[5+5i] ready zset,
--                       KEYS[6+5i] ready-since zset, KEYS[7+5i] wake list,
--                       KEYS[8+5i] failed index (zset scored by finish ms)
-- ARGV[1] most tasks per queue   ARGV[2] most deliveries before FAILED
-- ARGV[3] failed result TTL in seconds   ARGV[4] wake list cap
-- ARGV[5] lease length in ms   ARGV[6] the longest gap between reclaim calls (ms) that
--         is not taken for an outage   ARGV[7] the done channel   ARGV[8] done list TTL in ms
-- Returns {requeued, failed, held ms}. Each lost attempt appends a WorkerLost error and
-- counts in "lost", which makes the next delivery run alone on its worker.
-- After an outage (no reclaim call by any worker for longer than the gap: Redis was down
-- or unreachable, or no worker ran), every lease may have run out while its worker was
-- alive but unable to renew: nothing is reclaimed for one more lease, so live owners
-- renew first and only the tasks of workers that really died come back.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local state = redis.call('HMGET', KEYS[2], 'tick', 'hold')
local last, hold = tonumber(state[1]), tonumber(state[2])
redis.call('HSET', KEYS[2], 'tick', string.format('%.0f', now_ms))
if last == nil or now_ms - last > tonumber(ARGV[6]) then
  hold = now_ms + tonumber(ARGV[5])
  redis.call('HSET', KEYS[2], 'hold', string.format('%.0f', hold))
end
if hold and now_ms < hold then
  return {0, 0, hold - now_ms}
end
local nq = (#KEYS - 3) / 5
local requeued, failed = 0, 0
for i = 0, nq - 1 do
  local running, ready, since, wake = KEYS[4 + 5 * i], KEYS[5 + 5 * i], KEYS[6 + 5 * i], KEYS[7 + 5 * i]
  local expired = redis.call('ZRANGEBYSCORE', running, '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, id in ipairs(expired) do
    redis.call('ZREM', running, id)
    local key = KEYS[1] .. id
    if redis.call('HGET', key, 'status') == 'RUNNING' then
      local token = redis.call('HGET', key, 'owner') or 'unknown'
      local owner = string.match(token, '^(.*)#%d+$') or token
      local deliveries = tonumber(redis.call('HGET', key, 'deliveries') or '0')
      local poisoned = deliveries >= tonumber(ARGV[2])
      local message = 'conveyor.exceptions.WorkerLost: lease expired on worker ' .. owner ..
        ' (delivery ' .. deliveries .. ')'
      if poisoned then
        message = message .. '; giving up after ' .. deliveries .. ' deliveries'
      end
      local err = cjson.encode({exception_class_path = 'conveyor.exceptions.WorkerLost',
        traceback = message .. '\n'})
      local errors = json_list_append(redis.call('HGET', key, 'errors'), err)
      redis.call('HDEL', key, 'owner')
      redis.call('HINCRBY', key, 'lost', 1)
      if poisoned then
        redis.call('HSET', key, 'status', 'FAILED', 'errors', errors,
          'finished_at', string.format('%.0f', now_us))
        redis.call('EXPIRE', key, ARGV[3])
        redis.call('ZADD', KEYS[8 + 5 * i], now_ms, id)
        if redis.call('HEXISTS', key, 'waited') == 1 then
          notify_done(KEYS[3] .. id, ARGV[7], ARGV[8], id)
        end
        failed = failed + 1
      else
        redis.call('HSET', key, 'status', 'READY', 'errors', errors)
        redis.call('ZADD', ready, redis.call('HGET', key, 'score'), id)
        redis.call('ZADD', since, now_ms, id)
        redis.call('LPUSH', wake, '1')
        redis.call('LTRIM', wake, 0, tonumber(ARGV[4]) - 1)
        requeued = requeued + 1
      end
    end
  end
end
return {requeued, failed, 0}
