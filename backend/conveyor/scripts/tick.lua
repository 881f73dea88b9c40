-- tick: fire one schedule entry's due tick exactly once, however many workers race for it.
-- The caller read the entry's next tick (survey) and computed the one after it; only a
-- caller whose reading is still current moves it (compare-and-set), so one tick enqueues
-- once, and a call repeated after a lost reply changes nothing.
-- KEYS[1] the entry hash       KEYS[2] task key prefix (the script appends the last task's id)
-- KEYS[3] new task hash        KEYS[4] ready zset of the queue   KEYS[5] ready-since zset
-- KEYS[6] set of queue names   KEYS[7] sequence counter          KEYS[8] wake list of the queue
-- ARGV[1] next tick as read, '' when the entry is new or its timing changed (ms)
-- ARGV[2] the tick after it (ms)   ARGV[3] timing fingerprint
-- ARGV[4] what to do: 'init' (only note the next tick), 'fire', 'skip' (a missed tick, dropped)
-- ARGV[5] '1': skip while the last task enqueued is READY or RUNNING
-- ARGV[6] task id   ARGV[7] queue name   ARGV[8] priority   ARGV[9] wake list cap
-- ARGV[10..] field, value pairs of the task record (enqueued_at is set here, by the server clock)
-- Returns 0 when another worker moved the entry first (or the tick is not due yet), 1 when
-- noted (init), 2 when a task was enqueued, 3 when skipped as pending, 4 when skipped as missed.
local stored = redis.call('HMGET', KEYS[1], 'next', 'fp')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[4]
if mode == 'init' then
  -- A new entry, or one whose timing changed: the caller saw it so; still so?
  if stored[2] == ARGV[3] and stored[1] then
    return 0
  end
  redis.call('HSET', KEYS[1], 'next', ARGV[2], 'fp', ARGV[3])
  return 1
end
if stored[1] ~= ARGV[1] or stored[2] ~= ARGV[3] or tonumber(ARGV[1]) > now_ms then
  return 0
end
redis.call('HSET', KEYS[1], 'next', ARGV[2])
if mode == 'skip' then
  redis.call('HINCRBY', KEYS[1], 'skipped', 1)
  return 4
end
if ARGV[5] == '1' then
  local last = redis.call('HGET', KEYS[1], 'last_id')
  if last then
    local status = redis.call('HGET', KEYS[2] .. last, 'status')
    if status == 'READY' or status == 'RUNNING' then
      redis.call('HINCRBY', KEYS[1], 'skipped', 1)
      return 3
    end
  end
end
store_ready_task(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[6], ARGV[7], ARGV[8],
  now_ms, tonumber(ARGV[9]), string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])), ARGV, 10)
redis.call('HSET', KEYS[1], 'last_id', ARGV[6], 'last_at', now_ms)
return 2
