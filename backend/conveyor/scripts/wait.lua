-- wait: a waiter's look at one task before it blocks. A finished task's record is returned
-- whole; an unfinished one is marked "waited" in the same step, so the script that later
-- finishes it (finish, reclaim, cancel) writes its done list and publishes its id. Marking
-- and reading are one step, so no finish can fall between a waiter's look and its mark.
-- KEYS[1] task hash
-- Returns the record ({field, value, ...}) when SUCCESSFUL or FAILED, the status when not
-- finished yet, or nil when there is no such task.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return false
end
if status == 'SUCCESSFUL' or status == 'FAILED' then
  return redis.call('HGETALL', KEYS[1])
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'waited', t[1] .. string.sub('00000' .. t[2], -6))
return status
