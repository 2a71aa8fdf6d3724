-- COMMIT: replace a hold with the actual cost. Idempotent: the first commit or release of an
-- id settles it; later ones change nothing. A commit after the lease ran out still charges the
-- actual cost (the money was spent) and is flagged late; so is one for an id the store no
-- longer knows (its record expired, or was lost in a failover before it replicated).
--
-- KEYS[1]: tenant state hash          KEYS[2]: holds zset          KEYS[3]: reservation record
-- ARGV[1]: now, integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2]: reservation id (encoded, as in KEYS[3])
-- ARGV[3]: actual cost, integer nano-dollars
-- ARGV[4]: record ttl after settling, integer seconds
-- ARGV[5]: reclaim budget, max expired holds reclaimed by this call
-- ARGV[6]: comma-separated windows to charge when the record is gone
-- ARGV[7]: feature (encoded) or '', recorded when the record is gone
-- ARGV[8]: input tokens;  ARGV[9]: output tokens
--
-- Replies: {'committed', cost, 'late' | 'on_time', released hold}
--          {'duplicate', state of the earlier settlement, cost charged then}
local state, holds, record = KEYS[1], KEYS[2], KEYS[3]
local base = base_of(state)
local now = clock_ms(ARGV[1], redis.call('HGET', state, 't'))
local cost = tonumber(ARGV[3])
local done_ttl = ARGV[4]

reclaim(state, holds, base, now, tonumber(ARGV[5]), done_ttl)

local v = redis.call('HMGET', record, 's', 'a', 'w', 'c')
local status, windows, released = v[1], v[3], 0
if status == 'c' or status == 'r' then
  return { 'duplicate', status, v[4] or '0' }
end
local late = 'late'
if status == 'h' then
  released = num(v[2])
  local held = num(redis.call('HGET', state, 'held')) - released
  if held < 0 then
    held = 0
  end
  redis.call('HSET', state, 'held', fmt(held))
  redis.call('ZREM', holds, ARGV[2])
  late = 'on_time'
elseif not status then
  windows = ARGV[6]
  redis.call('HSET', record, 'a', '0', 'f', ARGV[7], 'w', windows)
end

charge(state, windows, math.floor(now / 1000), cost)
redis.call('HSET', state, 't', fmt(now))
redis.call('HSET', record, 's', 'c', 'c', fmt(cost), 'l', late, 'in', ARGV[8], 'out', ARGV[9])
redis.call('EXPIRE', record, done_ttl)
return { 'committed', fmt(cost), late, fmt(released) }
