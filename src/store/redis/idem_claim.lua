-- Claim an idempotency record, atomically.
-- KEYS[1]: the record hash {state, fp, owner[, answer]}.
-- ARGV[1]: fingerprint, ARGV[2]: owner, ARGV[3]: lease in milliseconds.
-- Returns {1} when claimed (or already claimed by this owner), else {0, fp, state, answer-or-nil}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'running', 'fp', ARGV[1], 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
end
local r = redis.call('HMGET', KEYS[1], 'fp', 'state', 'answer', 'owner')
-- The same owner claiming again (its first reply was lost): still its claim.
if r[2] == 'running' and r[4] == ARGV[2] then
  return {1}
end
return {0, r[1], r[2], r[3]}
