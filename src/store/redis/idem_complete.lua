-- Store the answer of a record still owned by the caller, atomically, and notify waiters.
-- KEYS[1]: the record hash. ARGV[1]: owner, ARGV[2]: answer bytes, ARGV[3]: TTL in
-- milliseconds, ARGV[4]: the events channel, ARGV[5]: the record's scope id (the message).
-- Returns 1 when stored, 0 when the record is gone or owned by someone else.
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'done', 'answer', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
