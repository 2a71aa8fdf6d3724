-- RELEASE: drop a hold without charging (the call failed before costing anything).
-- Idempotent, and a no-op for an id already committed, released or reclaimed.
--
-- KEYS[1]: tenant state hash          KEYS[2]: holds zset          KEYS[3]: reservation record
-- ARGV[1]: now, integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2]: reservation id (encoded, as in KEYS[3])
-- ARGV[3]: record ttl after settling, integer seconds
-- ARGV[4]: reclaim budget, max expired holds reclaimed by this call
--
-- Replies: {'released', amount}  |  {'noop', state or 'unknown'}
local state, holds, record = KEYS[1], KEYS[2], KEYS[3]
local now = clock_ms(ARGV[1], redis.call('HGET', state, 't'))
reclaim(state, holds, base_of(state), now, tonumber(ARGV[4]), ARGV[3])

local v = redis.call('HMGET', record, 's', 'a')
if v[1] ~= 'h' then
  return { 'noop', v[1] or 'unknown' }
end
local amount = num(v[2])
local held = num(redis.call('HGET', state, 'held')) - amount
if held < 0 then
  held = 0
end
redis.call('HSET', state, 'held', fmt(held), 't', fmt(now))
redis.call('ZREM', holds, ARGV[2])
redis.call('HSET', record, 's', 'r')
redis.call('EXPIRE', record, ARGV[3])
return { 'released', fmt(amount) }
