-- A window's {spent, reserved} (after budget_purge.lua: expired reservations do not count).
return {tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), reserved}
