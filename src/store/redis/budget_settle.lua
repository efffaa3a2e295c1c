-- Settle a reservation, atomically (after budget_purge.lua): if it is still held, it leaves
-- `reserved`; either way spent += the actual cost.
-- ARGV[1]: reservation id, ARGV[2]: its amount, ARGV[3]: actual cost, ARGV[4]: TTL in ms.
-- Arguments go to HINCRBY as the strings the caller sent: no float formatting on the way back.
release(ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
