-- drop: delete up to a batch of a queue's READY tasks, ready ones first, then waiting
-- ones (run_after, retry backoff); the caller calls again until 0.
-- KEYS[1] task key prefix (the script appends a task id to it)
-- KEYS[2] ready zset   KEYS[3] ready-since zset   KEYS[4] scheduled zset
-- KEYS[5] done list prefix (the script appends a task id to it)
-- ARGV[1] most tasks to delete in this call   ARGV[2] the done channel   ARGV[3] done list TTL in ms
-- Waiters of a deleted task are woken, to find it gone.
-- Returns how many entries were removed (a stale entry whose task is no longer READY is
-- dropped from its set, and the task is left alone).
local limit = tonumber(ARGV[1])
local removed = 0
for _, set in ipairs({KEYS[2], KEYS[4]}) do
  if removed < limit then
    local ids = redis.call('ZRANGE', set, 0, limit - removed - 1)
    for _, id in ipairs(ids) do
      local key = KEYS[1] .. id
      local record = redis.call('HMGET', key, 'status', 'waited')
      if record[1] == 'READY' then
        redis.call('DEL', key)
        if record[2] then
          notify_done(KEYS[5] .. id, ARGV[2], ARGV[3], id)
        end
      end
      redis.call('ZREM', set, id)
      redis.call('ZREM', KEYS[3], id)
      removed = removed + 1
    end
  end
end
return removed
