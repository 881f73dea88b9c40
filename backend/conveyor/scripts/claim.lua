-- claim: move up to N ready tasks, best first across the given queues, to their
-- in-flight sets under a lease, and mark them RUNNING for one delivery each.
-- KEYS[1] task key prefix (the script appends a task id to it)
-- KEYS[2] this claim's memo (a string key; what it claimed, for a replay of the call)
-- KEYS[3] the set of paused queue names: their tasks are neither claimed nor counted
-- For queue i = 0..n-1: KEYS[4+3i] ready zset, KEYS[5+3i] ready-since zset,
--                       KEYS[6+3i] running zset (score = lease deadline in ms)
-- ARGV[5..] the queue names, in the order of their keys (to look up in the paused set)
-- ARGV[1] worker id ([A-Za-z0-9._:-] only)   ARGV[2] lease length in ms
-- ARGV[3] most tasks to claim (0: none, only count the ready ones)
-- ARGV[4] how long the memo is kept, in ms (longer than a
--         client waits for a reply before it sends the call again)
-- Returns a flat array {id1, queue index1 (0-based), {field, value, ...}, id2, ...,
-- waiting}: the claimed tasks, then how many tasks are still ready in these queues.
-- Each delivery gets its own fencing token in the "owner" field, "<worker id>#<fence>",
-- where "fence" counts the task's claims and never goes down: finish, retry, renew,
-- release and postpone act only for the token they are given.
-- Replays: the same call sent again (its reply was lost with a connection) finds the
-- memo and returns the tasks it claimed that this delivery still holds, claiming nothing.
-- started_at is written by the first claim only (Django keeps last_attempted_at for the
-- latest attempt).
-- Bounded: at most 2N+8 pops; with several queues each head is read once and again
-- only after a pop from its queue (nothing else here changes a ready zset).
-- This is the worker's hottest script, so it makes as few calls as it can: one queue
-- pops without a head scan, and one HGETALL both checks a task and becomes its reply
-- (patched with what the HSET writes, as HGETALL after it would return).
local worker = ARGV[1]
local nq = (#KEYS - 3) / 3
local out = {}

local memo = redis.call('GET', KEYS[2])
if memo then
  local claimed = cjson.decode(memo)
  for i = 1, #claimed, 3 do
    local id = claimed[i]
    local record = redis.call('HGETALL', KEYS[1] .. id)
    for j = 1, #record, 2 do
      if record[j] == 'owner' and record[j + 1] == claimed[i + 2] then
        out[#out + 1] = id
        out[#out + 1] = claimed[i + 1]
        out[#out + 1] = record
      end
    end
  end
  out[#out + 1] = 0
  return out
end

local t = redis.call('TIME')
local now_text = t[1] .. string.sub('00000' .. t[2], -6) -- microseconds
local deadline = string.format('%d', tonumber(string.sub(now_text, 1, -4)) + tonumber(ARGV[2]))
local limit = tonumber(ARGV[3])
local claimed, pops = 0, 0
local heads = {} -- queue index -> head score, false when empty (or paused), nil when not read yet
if redis.call('SCARD', KEYS[3]) > 0 then -- one call when nothing is paused
  for i = 0, nq - 1 do
    if redis.call('SISMEMBER', KEYS[3], ARGV[5 + i]) == 1 then
      heads[i] = false
    end
  end
  if nq == 1 and heads[0] == false then
    out[#out + 1] = 0
    return out
  end
end
local memo_out = {}

-- Statuses a task id may still have when it is popped from a ready set by a stale entry:
-- those are skipped; any other status (or none) is a record to fail.
local settled = {RUNNING = true, SUCCESSFUL = true, FAILED = true}

-- Set a field of an HGETALL reply the way HSET does: in place, or appended when new.
local function put(record, at, name, value)
  if at then
    record[at] = value
  else
    record[#record + 1] = name
    record[#record + 1] = value
  end
end

while claimed < limit and pops < limit * 2 + 8 do
  local best = 0
  if nq ~= 1 then
    local best_score = nil
    best = nil
    for i = 0, nq - 1 do
      local score = heads[i]
      if score == nil then
        local head = redis.call('ZRANGE', KEYS[4 + 3 * i], '0', '0', 'WITHSCORES')
        score = head[1] and tonumber(head[2]) or false
        heads[i] = score
      end
      if score and (best_score == nil or score < best_score) then
        best, best_score = i, score
      end
    end
    if best == nil then
      break
    end
    heads[best] = nil
  end
  local id = redis.call('ZPOPMIN', KEYS[4 + 3 * best])[1]
  if id == nil then
    break
  end
  pops = pops + 1
  redis.call('ZREM', KEYS[5 + 3 * best], id)
  local key = KEYS[1] .. id
  local record = redis.call('HGETALL', key) -- empty when the hash is gone
  local at = {} -- field name -> index of its value in the reply
  for i = 1, #record, 2 do
    at[record[i]] = i + 1
  end
  if at.status and record[at.status] == 'READY' then
    local ids = json_list_append(at.worker_ids and record[at.worker_ids], json_worker_id(worker))
    local deliveries = string.format('%d', (at.deliveries and tonumber(record[at.deliveries]) or 0) + 1)
    local fence = string.format('%d', (at.fence and tonumber(record[at.fence]) or 0) + 1)
    local token = worker .. '#' .. fence
    redis.call('ZADD', KEYS[6 + 3 * best], deadline, id)
    if at.started_at then
      redis.call('HSET', key, 'status', 'RUNNING', 'last_attempted_at', now_text,
        'worker_ids', ids, 'owner', token, 'deliveries', deliveries, 'fence', fence)
    else
      redis.call('HSET', key, 'status', 'RUNNING', 'started_at', now_text,
        'last_attempted_at', now_text, 'worker_ids', ids, 'owner', token,
        'deliveries', deliveries, 'fence', fence)
      put(record, nil, 'started_at', now_text)
    end
    put(record, at.status, 'status', 'RUNNING')
    put(record, at.last_attempted_at, 'last_attempted_at', now_text)
    put(record, at.worker_ids, 'worker_ids', ids)
    put(record, at.owner, 'owner', token)
    put(record, at.deliveries, 'deliveries', deliveries)
    put(record, at.fence, 'fence', fence)
    out[#out + 1] = id
    out[#out + 1] = best
    out[#out + 1] = record
    memo_out[#memo_out + 1] = id
    memo_out[#memo_out + 1] = best
    memo_out[#memo_out + 1] = token
    claimed = claimed + 1
  elseif #record > 0 and not settled[at.status and record[at.status] or ''] then
    -- A hash with no status or one no version of conveyor writes: claim it as it is, so
    -- the worker fails it with the reason (its decoder names the status) instead of it
    -- staying in Redis forever. Its status is left for the decoder to see.
    local fence = string.format('%d', (at.fence and tonumber(record[at.fence]) or 0) + 1)
    local token = worker .. '#' .. fence
    redis.call('ZADD', KEYS[6 + 3 * best], deadline, id)
    redis.call('HSET', key, 'owner', token, 'fence', fence)
    put(record, at.owner, 'owner', token)
    put(record, at.fence, 'fence', fence)
    out[#out + 1] = id
    out[#out + 1] = best
    out[#out + 1] = record
    memo_out[#memo_out + 1] = id
    memo_out[#memo_out + 1] = best
    memo_out[#memo_out + 1] = token
    claimed = claimed + 1
  end
end
local waiting = 0
if claimed > 0 then
  redis.call('SET', KEYS[2], cjson.encode(memo_out), 'PX', ARGV[4])
end
if claimed > 0 or limit == 0 then -- a limit of 0 only counts (a worker's other slots)
  for i = 0, nq - 1 do
    if heads[i] ~= false then -- a queue read empty above is still empty
      waiting = waiting + redis.call('ZCARD', KEYS[4 + 3 * i])
    end
  end
end
out[#out + 1] = waiting
return out
