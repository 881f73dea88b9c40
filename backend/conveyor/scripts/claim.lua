-- claim: move up to N ready tasks, best first across the given queues, to their
-- in-flight sets under a lease, and mark them RUNNING for this worker.
-- KEYS[1] task key prefix (the script appends a task id to it)
-- For queue i = 0..n-1: KEYS[2+3i] ready zset, KEYS[3+3i] ready-since zset,
--                       KEYS[4+3i] running zset (score = lease deadline in ms)
-- ARGV[1] worker id ([A-Za-z0-9._:-] only)   ARGV[2] lease length in ms
-- ARGV[3] most tasks to claim
-- Returns a flat array {id1, queue index1 (0-based), {field, value, ...}, id2, ...,
-- waiting}: the claimed tasks, then how many tasks are still ready in these queues.
-- Bounded: at most 2N+8 pops, each looking at one head per queue.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_text = string.format('%.0f', now_us)
local deadline = string.format('%.0f', math.floor(now_us / 1000) + tonumber(ARGV[2]))
local worker = ARGV[1]
local nq = (#KEYS - 1) / 3
local limit = tonumber(ARGV[3])
local out = {}
local claimed, pops = 0, 0
while claimed < limit and pops < limit * 2 + 8 do
  local best, best_score = nil, nil
  for i = 0, nq - 1 do
    local head = redis.call('ZRANGE', KEYS[2 + 3 * i], 0, 0, 'WITHSCORES')
    if head[1] then
      local score = tonumber(head[2])
      if best_score == nil or score < best_score then
        best, best_score = i, score
      end
    end
  end
  if best == nil then
    break
  end
  pops = pops + 1
  local id = redis.call('ZPOPMIN', KEYS[2 + 3 * best])[1]
  redis.call('ZREM', KEYS[3 + 3 * best], id)
  local key = KEYS[1] .. id
  if redis.call('HGET', key, 'status') == 'READY' then
    local ids = redis.call('HGET', key, 'worker_ids')
    if not ids or ids == '[]' then
      ids = '["' .. worker .. '"]'
    else
      ids = string.sub(ids, 1, -2) .. ',"' .. worker .. '"]'
    end
    redis.call('ZADD', KEYS[4 + 3 * best], deadline, id)
    redis.call('HSET', key, 'status', 'RUNNING', 'started_at', now_text,
      'last_attempted_at', now_text, 'worker_ids', ids, 'owner', worker)
    redis.call('HINCRBY', key, 'deliveries', 1)
    out[#out + 1] = id
    out[#out + 1] = best
    out[#out + 1] = redis.call('HGETALL', key)
    claimed = claimed + 1
  end
end
local waiting = 0
if claimed > 0 then
  for i = 0, nq - 1 do
    waiting = waiting + redis.call('ZCARD', KEYS[2 + 3 * i])
  end
end
out[#out + 1] = waiting
return out
