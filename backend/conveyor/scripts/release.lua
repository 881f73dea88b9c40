-- release: give a claimed task back to the front of its place in the ready queue
-- (shutdown before it finished); the interrupted delivery does not count as poison.
-- KEYS[1] task hash   KEYS[2] running zset   KEYS[3] ready zset
-- KEYS[4] ready-since zset   KEYS[5] wake list
-- ARGV[1] task id   ARGV[2] delivery token ("<worker id>#<fence>")   ARGV[3] wake list cap
-- ARGV[4] '0' when the task never started here (claimed ahead): the claim is undone, so
--         this worker leaves worker_ids and the delivery does not count as an attempt
-- Returns 1 when released (or already released by this delivery), 0 when the lease was lost.
local owner = redis.call('HMGET', KEYS[1], 'owner', 'done_by')
if owner[1] ~= ARGV[2] then
  if owner[2] == ARGV[2] then
    return 1
  end
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'READY', 'done_by', ARGV[2])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
if ARGV[4] == '0' then
  undo_attempt(KEYS[1], ARGV[2])
end
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'score'), ARGV[1])
redis.call('ZADD', KEYS[4], now_ms, ARGV[1])
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[3]) - 1)
return 1
