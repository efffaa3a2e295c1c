-- Prelude of every budget script: drop the window's expired reservations.
-- KEYS[1]: the window's hash {spent, reserved}, integer micro-dollars; `reserved` is the sum of
-- the live reservations. KEYS[2]: those reservations, a sorted set scored by expiry (ms on the
-- Redis clock) of `id:amount` (held) and `id:x` (a tombstone: that id was cancelled, so a
-- reserve of it landing late is refused). Leaves `now`, `reserved` and `release` in locals.
-- Before Redis 5, a script that reads TIME and then writes must replicate by effects.
if redis.replicate_commands ~= nil then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
-- Takes the reservation `id` of `amount` out of the set and out of `reserved` if it is still
-- held there; true if it was.
local function release(id, amount)
  if redis.call('ZREM', KEYS[2], id .. ':' .. amount) == 0 then
    return false
  end
  reserved = math.max(reserved - tonumber(amount), 0)
  redis.call('HSET', KEYS[1], 'reserved', string.format('%d', reserved))
  return true
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  for _, m in ipairs(expired) do
    reserved = reserved - tonumber(string.match(m, ':(%d+)$') or '0')
  end
  reserved = math.max(reserved, 0)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  -- Only into a hash that exists (made, with its TTL, by a reserve or a settle): a missing one
  -- holds nothing, and writing it here would leave a key without a TTL.
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'reserved', string.format('%d', reserved))
  end
end
