-- enqueue_many: store a chunk of new tasks of one task and queue, atomically; idempotent by task id.
-- KEYS[1] ready zset of the queue   KEYS[2] ready-since zset   KEYS[3] scheduled zset
-- KEYS[4] set of known queue names  KEYS[5] sequence counter   KEYS[6] wake list of the queue
-- KEYS[7..] the task hashes, one per task, in the order of the records in ARGV
-- ARGV[1] queue name   ARGV[2] priority (-100..100)
-- ARGV[3] due time in ms since the epoch, "" for now   ARGV[4] wake list cap
-- ARGV[5] n, the number of field, value pairs every record shares
-- ARGV[6 .. 5 + 2n] those shared pairs
-- then per task: its id, its args JSON, its kwargs JSON
-- Returns the number of tasks stored; a task whose id already exists (a retried call) is skipped.
-- Ready score: ready_score() in _lib.lua; the chunk takes one block of the sequence.
-- Every key is checked for its type before the first write, so a key some other
-- program wrote (or any WRONGTYPE) fails the call with nothing written.
local expected = {'zset', 'zset', 'zset', 'set', 'string', 'list'}
for i = 1, 6 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= expected[i] then
    return redis.error_reply('WRONGTYPE conveyor expected ' .. KEYS[i] .. ' to be a ' ..
      expected[i] .. ' but it is a ' .. kind .. '; nothing was written')
  end
end
local shared = {}
local n = tonumber(ARGV[5])
for i = 6, 5 + 2 * n do
  shared[#shared + 1] = ARGV[i]
end
local first = 6 + 2 * n
local ids, hashes = {}, {}
for k = 7, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 0 then
    local at = first + 3 * (k - 7)
    ids[#ids + 1] = ARGV[at]
    hashes[#hashes + 1] = k
  end
end
local count = #ids
if count == 0 then
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local scheduled = ARGV[3] ~= '' and tonumber(ARGV[3]) > now_ms
local seq = 0
if not scheduled then
  seq = redis.call('INCRBY', KEYS[5], count) - count
end
local fields = #shared
local scores, since = {}, {}
for j = 1, count do
  local k = hashes[j]
  local at = first + 3 * (k - 7)
  shared[fields + 1], shared[fields + 2] = 'args', ARGV[at + 1]
  shared[fields + 3], shared[fields + 4] = 'kwargs', ARGV[at + 2]
  if scheduled then
    redis.call('HSET', KEYS[k], unpack(shared))
    scores[#scores + 1], scores[#scores + 2] = ARGV[3], ids[j]
  else
    local score = ready_score(ARGV[2], seq + j)
    shared[fields + 5], shared[fields + 6] = 'score', score
    redis.call('HSET', KEYS[k], unpack(shared))
    scores[#scores + 1], scores[#scores + 2] = score, ids[j]
    since[#since + 1], since[#since + 2] = now_ms, ids[j]
  end
end
if scheduled then
  redis.call('ZADD', KEYS[3], unpack(scores))
else
  redis.call('ZADD', KEYS[1], unpack(scores))
  redis.call('ZADD', KEYS[2], unpack(since))
end
redis.call('SADD', KEYS[4], ARGV[1])
-- Wake as many idle workers as there are new tasks; the list never grows past the cap.
local cap = tonumber(ARGV[4])
local tokens = {}
for i = 1, math.min(count, cap) do
  tokens[i] = '1'
end
if redis.call('LPUSH', KEYS[6], unpack(tokens)) > cap then
  redis.call('LTRIM', KEYS[6], 0, cap - 1)
end
return count
