-- trim: drop index entries whose results have expired (by the result TTLs), a bounded
-- number per index per call; run by every worker's maintenance, so memory stays bounded.
-- For queue i = 0..n-1: KEYS[1+2i] succeeded index, KEYS[2+2i] failed index
-- ARGV[1] result TTL (s)   ARGV[2] failed result TTL (s)   ARGV[3] most entries per index
-- Returns how many entries were dropped. An entry whose task was retried and finished
-- again is re-scored by that finish, so only stale entries fall below the cutoff.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttls = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local dropped = 0
for k = 1, #KEYS do
  local cutoff = now_ms - ttls[2 - (k % 2)] * 1000
  local ids = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', string.format('%.0f', cutoff), 'LIMIT', 0, tonumber(ARGV[3]))
  if #ids > 0 then
    redis.call('ZREM', KEYS[k], unpack(ids))
    dropped = dropped + #ids
  end
end
return dropped
