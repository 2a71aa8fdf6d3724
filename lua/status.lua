-- STATUS: a tenant's plan, kill switches, open holds and the counters of the given windows.
-- Reclaims expired holds first (bounded), so `held` matches what the next reserve will see.
--
-- KEYS[1]: tenant state hash          KEYS[2]: holds zset
-- ARGV[1]: now, integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2]: default plan name
-- ARGV[3]: reclaim budget;  ARGV[4]: record ttl after settling, integer seconds
-- ARGV[5]: number of windows W; then W window codes
--
-- Reply: {now ms, plan, killed '1'|'0', held, open holds, killed features (comma-separated,
--         encoded), then per window: used, requests, carried-from cost, period start s, end s}
local state, holds = KEYS[1], KEYS[2]
local now = clock_ms(ARGV[1], redis.call('HGET', state, 't'))
reclaim(state, holds, base_of(state), now, tonumber(ARGV[3]), ARGV[4])

local meta = redis.call('HMGET', state, 'plan', 'k', 'held')
local killed_features = {}
-- Feature kill switches are few (set by operators); the state hash has a bounded field count.
for _, field in ipairs(redis.call('HKEYS', state)) do
  if string.sub(field, 1, 2) == 'k:' then
    killed_features[#killed_features + 1] = string.sub(field, 3)
  end
end
local reply = { fmt(now), meta[1] or ARGV[2], meta[2] and '1' or '0', fmt(num(meta[3])),
  fmt(redis.call('ZCARD', holds)), table.concat(killed_features, ',') }
local now_s = math.floor(now / 1000)
for n = 1, tonumber(ARGV[5]) do
  local window = ARGV[5 + n]
  local start, finish = period(window, now_s)
  local c, r, q = window_counters(state, window, start)
  reply[#reply + 1] = fmt(c)
  reply[#reply + 1] = fmt(r)
  reply[#reply + 1] = fmt(q)
  reply[#reply + 1] = fmt(start)
  reply[#reply + 1] = fmt(finish)
end
return reply
