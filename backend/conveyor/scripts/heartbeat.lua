-- heartbeat: note that a worker is alive, with what it tells about itself, until a TTL
-- runs out; forget workers whose heartbeat ran out (the string keys expire on their own).
-- KEYS[1] the worker's heartbeat string   KEYS[2] zset of worker ids by expiry (ms)
-- ARGV[1] worker id   ARGV[2] its description, a non-empty JSON object
-- ARGV[3] TTL in ms, or 0 to leave
-- The stored description gains "seen_ms", this beat's time by the server clock.
-- Returns the server time in ms.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
if tonumber(ARGV[3]) > 0 then
  local seen = string.format('"seen_ms":%.0f}', now_ms)
  local body = string.match(ARGV[2], '^(.*[^{%s])%s*}%s*$')
  body = body and (body .. ',' .. seen) or ('{' .. seen)
  redis.call('SET', KEYS[1], body, 'PX', ARGV[3])
  redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[3]), ARGV[1])
else
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return now_ms
