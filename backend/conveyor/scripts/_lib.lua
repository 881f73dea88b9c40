-- _lib: prepended to every script (store.script_source), so each encoding below exists once.
-- Tested against Python's encoding in tests/integration/test_lua_lib.py.

-- The ready score: (100 - priority) * 2^44 + seq (codec.ready_score), so ZPOPMIN gives the
-- highest priority first and enqueue order within a priority; exact doubles below 2^53.
local function ready_score(priority, seq)
  return string.format('%.0f', (100 - tonumber(priority)) * 17592186044416 + tonumber(seq))
end

-- A TIME reply as whole milliseconds, in text (exact: no float formatting of a 13-digit number).
local function time_ms_text(t)
  return t[1] .. string.sub('00' .. math.floor(tonumber(t[2]) / 1000), -3)
end

-- A worker id as a JSON string: ids hold only [A-Za-z0-9._:-] (the worker's settings
-- refuse anything else), so quoting them is their JSON encoding.
local function json_worker_id(worker)
  return '"' .. worker .. '"'
end

-- Append one JSON-encoded item to a JSON list kept as text ('[]', or nil for none yet).
local function json_list_append(list, item)
  if not list or list == '[]' then
    return '[' .. item .. ']'
  end
  return string.sub(list, 1, -2) .. ',' .. item .. ']'
end

-- Drop a JSON-encoded item from the end of a JSON list kept as text; nil when it is not last.
local function json_list_drop_last(list, item)
  if not list then
    return nil
  end
  if list == '[' .. item .. ']' then
    return '[]'
  end
  local tail = ',' .. item .. ']'
  if string.sub(list, -#tail) == tail then
    return string.sub(list, 1, -#tail - 1) .. ']'
  end
  return nil
end


-- Undo a claim's attempt on a task hash: drop the token's worker from the end of
-- worker_ids, and with no attempt left, the attempt timestamps too.
local function undo_attempt(key, token)
  local worker = string.match(token, '^(.*)#%d+$') or token
  local ids = json_list_drop_last(redis.call('HGET', key, 'worker_ids'), json_worker_id(worker))
  if ids then
    redis.call('HSET', key, 'worker_ids', ids)
    if ids == '[]' then
      redis.call('HDEL', key, 'started_at', 'last_attempted_at')
    end
  end
end

-- Store a new task record and make it ready now, as enqueue.lua does for a task without
-- run_after: one HSET with its ready score, the ready and ready-since sets, the queue name,
-- and one wake token (the list capped). fields[from..] are the record's field, value pairs;
-- enqueued_at (µs, text) overrides the record's own.
local function store_ready_task(task, ready, since, queues, seq_key, wake, id, queue, priority,
                                now_ms, cap, enqueued_at, fields, from)
  local seq = redis.call('INCR', seq_key)
  local score = ready_score(priority, seq)
  redis.call('HSET', task, 'score', score, unpack(fields, from))
  redis.call('HSET', task, 'enqueued_at', enqueued_at)
  redis.call('ZADD', ready, score, id)
  redis.call('ZADD', since, now_ms, id)
  redis.call('SADD', queues, queue)
  if redis.call('LPUSH', wake, '1') > cap then
    redis.call('LTRIM', wake, 0, cap - 1)
  end
end

-- Tell waiters a task reached a final state: its done list holds one token for a while
-- (a waiter blocks on it with BLMOVE list list, which leaves the token for the next one)
-- and its id goes to the done channel (the asyncio waiters' one subscription).
local function notify_done(list, channel, ttl_ms, id)
  redis.call('DEL', list)
  redis.call('RPUSH', list, '1')
  redis.call('PEXPIRE', list, ttl_ms)
  redis.call('PUBLISH', channel, id)
end
