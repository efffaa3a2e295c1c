-- GCRA (generic cell rate algorithm), atomically, on the Redis clock so that replicas agree.
-- KEYS[1]: the theoretical arrival time (TAT), integer microseconds since the Unix epoch.
-- ARGV[1]: increment = emission interval x cost (us); ARGV[2]: tolerance = period (us).
-- Returns {1, 0} when allowed (TAT advanced), {0, retry_after_us} when denied (nothing written).
-- Before Redis 5, a script that reads TIME and then writes must replicate by effects.
if redis.replicate_commands ~= nil then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + tonumber(ARGV[1])
local allow_at = new_tat - tonumber(ARGV[2])
if allow_at > now then
  return {0, allow_at - now}
end
local ttl_ms = math.floor((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', ttl_ms))
return {1, 0}
