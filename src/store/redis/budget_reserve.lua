-- Reserve budget in one window, atomically.
-- KEYS[1]: the window's hash {spent, reserved}, integer micro-dollars.
-- ARGV[1]: limit, ARGV[2]: amount, ARGV[3]: TTL in milliseconds.
-- Returns {1, spent, reserved_after} when admitted, {0, spent, reserved} when exhausted.
local v = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
local spent = tonumber(v[1] or '0')
local reserved = tonumber(v[2] or '0')
if spent + reserved + tonumber(ARGV[2]) > tonumber(ARGV[1]) then
  return {0, spent, reserved}
end
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, spent, reserved}
