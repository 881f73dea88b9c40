-- survey: read this worker's schedule entries, note them as still declared, and drop entries
-- no worker has declared for a while (a schedule removed from settings).
-- KEYS[1] sorted set of entry names by when last declared (ms)
-- KEYS[2] entry hash prefix (the script appends a stale entry's name to it)
-- KEYS[3..] the hash of each entry this worker declares
-- ARGV[1] ms after which an undeclared entry is dropped   ARGV[2] most entries dropped per call
-- ARGV[3..] the name of each entry, in KEYS order
-- Returns {server time in ms, next tick or '' and fingerprint or '' per entry, ...}.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now_ms}
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[1], now_ms, ARGV[i])
  local fields = redis.call('HMGET', KEYS[i], 'next', 'fp')
  out[#out + 1] = fields[1] or ''
  out[#out + 1] = fields[2] or ''
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[2]))
for _, name in ipairs(stale) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('DEL', KEYS[2] .. name)
end
return out
