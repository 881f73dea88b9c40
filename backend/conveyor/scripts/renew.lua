-- renew: push a running task's lease deadline forward if this delivery still owns it.
-- KEYS[1] task hash   KEYS[2] running zset of its queue
-- ARGV[1] task id   ARGV[2] delivery token   ARGV[3] lease length in ms
-- Returns 1 when renewed, 2 when renewed and an operator asked to cancel the task (its
-- worker stops it), 0 when the lease was lost.
local held = redis.call('HMGET', KEYS[1], 'owner', 'cancel')
if held[1] ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', string.format('%.0f', deadline), ARGV[1])
if held[2] then
  return 2
end
return 1
