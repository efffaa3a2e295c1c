-- Extend the lease of a running record still owned by the caller, atomically.
-- KEYS[1]: the record hash. ARGV[1]: owner, ARGV[2]: lease in milliseconds.
-- Returns 1 when extended, else 0.
local r = redis.call('HMGET', KEYS[1], 'owner', 'state')
if r[1] ~= ARGV[1] or r[2] ~= 'running' then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
