-- Reserve budget in one window, atomically (after budget_purge.lua).
-- ARGV[1]: limit, ARGV[2]: amount, ARGV[3]: the keys' TTL in ms, ARGV[4]: reservation id,
-- ARGV[5]: its lease in ms (it expires then unless settled or cancelled first).
-- Returns {1, spent, reserved_after} when admitted, {0, spent, reserved} when exhausted,
-- {2, spent, reserved} when this id was cancelled already (a reserve that landed late).
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
if redis.call('ZSCORE', KEYS[2], ARGV[4] .. ':x') then
  return {2, spent, reserved}
end
if spent + reserved + tonumber(ARGV[2]) > tonumber(ARGV[1]) then
  return {0, spent, reserved}
end
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
local expiry = string.format('%d', now + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[2], expiry, ARGV[4] .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, spent, reserved}
