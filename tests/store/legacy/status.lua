-- STATUS: a tenant's plan, kill switches, open holds and the counters of its limits (and of
-- its pool's). Reclaims expired holds first (bounded), so `held` matches what the next reserve
-- will see.
--
-- KEYS[1] state: tenant state TB.."s"
-- KEYS[2] holds: holds of the tag TAG.."h"
-- KEYS[3] pool_state?: pool state TAG.."pool:s" (pool members only)
-- ARGV[1] now_ms: integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2] default_plan: the plan of a tenant without one
-- ARGV[3] reclaim: most expired holds reclaimed by this call
-- ARGV[4] record_ttl_s: record ttl after settling, integer seconds
-- ARGV[5] pool: the pool the caller assumed (encoded) or ''
-- ARGV[6] plan: the tenant's plan the caller assumed
-- ARGV[7] pool_plan: the pool's plan the caller assumed, or ''
-- ARGV[8] specs...: features (a count, then (name, weight ppm) pairs), then the tenant's and
--         the pool's limit specs (see read_specs)
--
-- Reply: {'status', 0, now ms, plan, killed '1'|'0', held, open holds, killed features
--         (comma-separated, encoded), pool plan, pool held, then per tenant limit: used,
--         requests, carried, resets s, and per listed feature its used (calendar limits) or
--         '-'; then per pool limit: used, requests, carried, resets s}
--        | {'moved', 0, where the tenant lives now} | {'plan' | 'pool_plan', 0, stored plan}
local state, holds, pool_state = KEYS[1], KEYS[2], KEYS[3]
local tag = string.sub(holds, 1, -2)
local tb = string.sub(state, 1, -2)
local meta = redis.call('HMGET', state, 't', 'loc', 'pool', 'plan')
local elsewhere = moved(meta[2], meta[3], ARGV[5])
if elsewhere then
  return { 'moved', 0, elsewhere }
end
local retry = plans_differ(meta[4], ARGV[2], ARGV[6], pool_state, ARGV[7])
if retry then
  return retry
end
local now = clock_ms(ARGV[1], meta[1])
local now_s = math.floor(now / 1000)
reclaim(tag, now, tonumber(ARGV[3]), ARGV[4], pool_state ~= nil)

local features, i = read_features(8)
local specs, pool_specs
specs, i = read_specs(i)
pool_specs = read_specs(i)
load_scope(state, tb, specs, now_s, #features > 0 and features or nil)

local v = redis.call('HMGET', state, 'plan', 'k', 'held', 'nh')
local killed_features = {}
-- Feature kill switches are few (set by operators); the state hash has a bounded field count.
for _, field in ipairs(redis.call('HKEYS', state)) do
  if string.sub(field, 1, 2) == 'k:' then
    killed_features[#killed_features + 1] = string.sub(field, 3)
  end
end
local pool_plan, pool_held = '', 0
if pool_state then
  local p = redis.call('HMGET', pool_state, 'plan', 'held')
  pool_plan, pool_held = p[1] or '', num(p[2])
  load_scope(pool_state, tag .. 'pool:', pool_specs, now_s, nil)
end
local reply = { 'status', 0, fmt(now), v[1] or ARGV[2], v[2] and '1' or '0', fmt(num(v[3])),
  fmt(num(v[4])), table.concat(killed_features, ','), pool_plan, fmt(pool_held) }
local function add(s, with_features)
  local resets = s.resets
  if s.kind == 's' then
    resets = sliding_resets(s)
  end
  for _, x in ipairs({ fmt(s.used), fmt(s.requests), fmt(s.carried), fmt(resets) }) do
    reply[#reply + 1] = x
  end
  if with_features then
    for _, f in ipairs(features) do
      if s.kind == 'c' then
        reply[#reply + 1] = fmt(s.fused[f.name])
      else
        reply[#reply + 1] = '-'
      end
    end
  end
end
for _, s in ipairs(specs) do
  add(s, true)
end
if pool_state then
  for _, s in ipairs(pool_specs) do
    add(s, false)
  end
end
return reply
