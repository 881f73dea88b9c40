-- enqueue: store a new task and make it ready (or schedule it); idempotent by task id.
-- KEYS[1] task hash                 KEYS[2] ready zset of the queue
-- KEYS[3] ready-since zset          KEYS[4] scheduled zset of the queue
-- KEYS[5] set of known queue names  KEYS[6] sequence counter
-- KEYS[7] wake list of the queue
-- KEYS[8] unique lock (a string holding a task id)   KEYS[9] task hash prefix
--         (both only for a unique task)
-- ARGV[1] task id   ARGV[2] queue name   ARGV[3] priority (-100..100)
-- ARGV[4] due time in ms since the epoch, "" for now   ARGV[5] wake list cap
-- ARGV[6] unique window in ms ("" when not unique)
-- ARGV[7] "1" when a RUNNING lock holder still counts, else "0"
-- ARGV[8..] field, value pairs of the record
-- Returns 1 when stored, 0 when a task with this id already exists (a retried call),
-- or {holder id, holder's hash as a flat list} when the unique lock names a task that is
-- READY (ready or waiting), or RUNNING and ARGV[7] is "1": then nothing is written.
-- A lock naming a finished or missing task is stale and taken over (so finishing a task
-- needs no script of its own to free its lock).
-- Ready score: ready_score() in _lib.lua.
-- This runs once per enqueue, so it makes as few calls as it can: one HSET per record.
-- Every key is checked for its type before the first write, so a key some other
-- program wrote (or any WRONGTYPE) fails the call with nothing written.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local expected = {'zset', 'zset', 'zset', 'set', 'string', 'list', 'string'}
for i = 2, #KEYS < 8 and 7 or 8 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= expected[i - 1] then
    return redis.error_reply('WRONGTYPE conveyor expected ' .. KEYS[i] .. ' to be a ' ..
      expected[i - 1] .. ' but it is a ' .. kind .. '; nothing was written')
  end
end
local id = ARGV[1]
if ARGV[6] ~= '' then
  local holder = redis.call('GET', KEYS[8])
  if holder then
    local key = KEYS[9] .. holder
    local status = redis.call('TYPE', key)['ok'] == 'hash' and redis.call('HGET', key, 'status')
    if status == 'READY' or (status == 'RUNNING' and ARGV[7] == '1') then
      return {holder, redis.call('HGETALL', key)}
    end
  end
  redis.call('SET', KEYS[8], id, 'PX', ARGV[6])
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] ~= '' and tonumber(ARGV[4]) > now_ms then
  redis.call('HSET', KEYS[1], unpack(ARGV, 8))
  redis.call('ZADD', KEYS[4], ARGV[4], id)
else
  local seq = redis.call('INCR', KEYS[6])
  local score = ready_score(ARGV[3], seq)
  redis.call('HSET', KEYS[1], 'score', score, unpack(ARGV, 8))
  redis.call('ZADD', KEYS[2], score, id)
  redis.call('ZADD', KEYS[3], now_ms, id)
end
redis.call('SADD', KEYS[5], ARGV[2])
-- Wake an idle worker: for a ready task to claim it, for a scheduled one to
-- recompute how long it may sleep. The list never grows past the cap.
local cap = tonumber(ARGV[5])
if redis.call('LPUSH', KEYS[7], '1') > cap then
  redis.call('LTRIM', KEYS[7], 0, cap - 1)
end
return 1
