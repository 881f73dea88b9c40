-- purge: delete up to a batch of finished tasks from one index (succeeded or failed),
-- oldest first, finished at or before a cutoff; the caller calls again until 0.
-- KEYS[1] task key prefix (the script appends a task id to it)   KEYS[2] the index zset
-- ARGV[1] cutoff, finish time in ms   ARGV[2] most tasks to delete in this call
-- ARGV[3] the status the index holds: a task found in another state (retried since) is
--         only dropped from the index, never deleted
-- Returns how many index entries were removed.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local key = KEYS[1] .. id
  if redis.call('HGET', key, 'status') == ARGV[3] then
    redis.call('DEL', key)
  end
  redis.call('ZREM', KEYS[2], id)
end
return #ids
