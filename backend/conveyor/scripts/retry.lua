-- retry: after a failed attempt with attempts left, put the task back as READY in
-- its queue's schedule, due after a backoff, if this worker still holds its lease.
-- KEYS[1] task hash   KEYS[2] running zset   KEYS[3] scheduled zset   KEYS[4] wake list
-- ARGV[1] task id   ARGV[2] worker id   ARGV[3] backoff in ms   ARGV[4] wake list cap
-- ARGV[5..] field, value pairs to set (errors)
-- Returns the due time in ms since the epoch, or 0 when the lease was lost.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'READY', unpack(ARGV, 5))
redis.call('HDEL', KEYS[1], 'owner')
redis.call('ZADD', KEYS[3], string.format('%.0f', due), ARGV[1])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
return due
