-- finish: record a task's final state (SUCCESSFUL or FAILED) if this delivery still
-- holds its lease, take it out of the in-flight set, index it by finish time and start
-- its result TTL.
-- KEYS[1] task hash   KEYS[2] running zset of its queue
-- KEYS[3] the queue's index of this status (succeeded or failed zset, scored by finish ms)
-- KEYS[4] the task's done list (waiters block on it)
-- ARGV[1] task id   ARGV[2] delivery token (the claim's "owner")   ARGV[3] status
-- ARGV[4] result TTL in seconds   ARGV[5] the done channel   ARGV[6] done list TTL in ms
-- ARGV[7..] field, value pairs to set (finished_at, errors, result)
-- Returns 1 when recorded (or already recorded by this same delivery: a replayed call),
-- 0 when the lease was lost (another delivery owns the task, or it was reclaimed).
-- The index is trimmed as results expire by the workers' maintenance (trim.lua).
-- Waiters (wait.lua) mark the hash "waited"; only then is the done list written and the
-- id published, so a task nobody waits for costs no extra call (the HMGET reads the mark).
local owner = redis.call('HMGET', KEYS[1], 'owner', 'done_by', 'waited')
if owner[1] ~= ARGV[2] then
  if owner[2] == ARGV[2] then
    return 1
  end
  return 0
end
local t = redis.call('TIME')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'done_by', ARGV[2], unpack(ARGV, 7))
redis.call('HDEL', KEYS[1], 'owner', 'lost')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], time_ms_text(t), ARGV[1])
if owner[3] then
  notify_done(KEYS[4], ARGV[5], ARGV[6], ARGV[1])
end
return 1
