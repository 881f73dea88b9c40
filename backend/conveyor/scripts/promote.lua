-- promote: move scheduled tasks whose due time has passed (server clock) to their
-- ready queue, exactly once however many workers race, and report the next due time.
-- KEYS[1] task key prefix (the script appends a task id to it)   KEYS[2] sequence counter
-- For queue i = 0..n-1: KEYS[3+4i] scheduled zset, KEYS[4+4i] ready zset,
--                       KEYS[5+4i] ready-since zset, KEYS[6+4i] wake list
-- ARGV[1] most tasks per queue   ARGV[2] wake list cap
-- Returns {promoted, next due time in ms or -1, server time in ms}.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nq = (#KEYS - 2) / 4
local promoted, next_due = 0, -1
for i = 0, nq - 1 do
  local scheduled, ready, since, wake = KEYS[3 + 4 * i], KEYS[4 + 4 * i], KEYS[5 + 4 * i], KEYS[6 + 4 * i]
  local due = redis.call('ZRANGEBYSCORE', scheduled, '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, id in ipairs(due) do
    redis.call('ZREM', scheduled, id)
    local key = KEYS[1] .. id
    local priority = redis.call('HGET', key, 'priority')
    if priority then
      local seq = redis.call('INCR', KEYS[2])
      local score = ready_score(priority, seq)
      redis.call('ZADD', ready, score, id)
      redis.call('ZADD', since, now_ms, id)
      redis.call('HSET', key, 'score', score)
      redis.call('LPUSH', wake, '1')
      redis.call('LTRIM', wake, 0, tonumber(ARGV[2]) - 1)
      promoted = promoted + 1
    end
  end
  local head = redis.call('ZRANGE', scheduled, 0, 0, 'WITHSCORES')
  if head[1] then
    local score = tonumber(head[2])
    if next_due < 0 or score < next_due then
      next_due = score
    end
  end
end
return {promoted, next_due, now_ms}
