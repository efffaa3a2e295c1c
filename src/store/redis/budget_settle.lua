-- Settle a reservation, atomically: reserved -= ARGV[1] (floor 0); spent += ARGV[2].
-- KEYS[1]: the window's hash {spent, reserved}, integer micro-dollars.
-- ARGV[1]: reserved amount, ARGV[2]: actual cost, ARGV[3]: TTL in milliseconds.
-- Arguments go to HINCRBY as the strings the caller sent: no float formatting on the way back.
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if tonumber(ARGV[1]) >= reserved then
  redis.call('HSET', KEYS[1], 'reserved', '0')
else
  redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. ARGV[1])
end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
