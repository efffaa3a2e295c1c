-- Delete a running record still owned by the caller, atomically, and notify waiters.
-- KEYS[1]: the record hash. ARGV[1]: owner, ARGV[2]: the events channel, ARGV[3]: the
-- record's scope id (the message). Returns 1 when deleted, else 0.
local r = redis.call('HMGET', KEYS[1], 'owner', 'state')
if r[1] ~= ARGV[1] or r[2] ~= 'running' then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
