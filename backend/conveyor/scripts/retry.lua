-- retry: after a failed attempt with attempts left, put the task back as READY in
-- its queue's schedule, due after a backoff, if this delivery still holds its lease.
-- KEYS[1] task hash   KEYS[2] running zset   KEYS[3] scheduled zset   KEYS[4] wake list
-- ARGV[1] task id   ARGV[2] delivery token   ARGV[3] backoff in ms   ARGV[4] wake list cap
-- ARGV[5..] field, value pairs to set (errors)
-- Returns the due time in ms since the epoch, 1 for a replay of a call this delivery
-- already made, or 0 when the lease was lost. The attempt ended without taking its
-- worker down, so the task no longer counts as one that lost a worker ("lost").
local owner = redis.call('HMGET', KEYS[1], 'owner', 'done_by')
if owner[1] ~= ARGV[2] then
  if owner[2] == ARGV[2] then
    return 1
  end
  return 0
end
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'READY', 'done_by', ARGV[2], unpack(ARGV, 5))
redis.call('HDEL', KEYS[1], 'owner', 'lost')
redis.call('ZADD', KEYS[3], string.format('%.0f', due), ARGV[1])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
return due
