-- finish: record a task's final state (SUCCESSFUL or FAILED) if this worker still
-- holds its lease, take it out of the in-flight set and start its result TTL.
-- KEYS[1] task hash   KEYS[2] running zset of its queue
-- ARGV[1] task id   ARGV[2] worker id   ARGV[3] status   ARGV[4] result TTL in seconds
-- ARGV[5..] field, value pairs to set (finished_at, errors, result)
-- Returns 1 when recorded, 0 when the lease was lost (another worker owns the task).
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[3], unpack(ARGV, 5))
redis.call('HDEL', KEYS[1], 'owner')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
