-- Cancel a reservation whose reserve call timed out (after budget_purge.lua): if it landed,
-- it leaves `reserved`; if not (yet), a tombstone makes it refused should it land later.
-- ARGV[1]: reservation id, ARGV[2]: its amount, ARGV[3]: TTL in ms, ARGV[4]: lease in ms.
if release(ARGV[1], ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[4])), ARGV[1] .. ':x')
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
