-- STATUS: a tenant's plan, kill switches, open holds and the counters of its limits (and of
-- its pool's). Reclaims expired holds first (bounded), so `held` matches what the next reserve
-- will see. Reads the counters as the next reserve would (a period that ended reads as the new
-- one) without storing them.
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
-- ARGV[8] specs...: features: a count, (name, weight ppm) pairs; then the tenant's and the
--         pool's limit specs (see read_specs)
--
-- Reply: {'status', 0, now ms, plan, killed '1'|'0', held, open holds, killed features
--         (comma-separated, encoded), pool plan, pool held, then per tenant limit: used,
--         requests, carried, resets s, and per listed feature its used (calendar limits) or
--         '-'; then per pool limit: used, requests, carried, resets s}
--        | {'moved', 0, where the tenant lives now} | {'plan' | 'pool_plan', 0, stored plan}
local state, holds, pool_state = KEYS[1], KEYS[2], KEYS[3]
local pooled = pool_state ~= nil
local tag = string.sub(holds, 1, -2)
local tb = string.sub(state, 1, -2)
local meta = redis.call('HMGET', state, 't', 'loc', 'pool', 'plan', 'sv')
local elsewhere = moved(meta[2], meta[3], ARGV[5])
if elsewhere then
  return { 'moved', 0, elsewhere }
end
local pool_plan, pool_sv = nil, nil
if pooled then
  local p = redis.call('HMGET', pool_state, 'plan', 'sv', 'held')
  pool_plan, pool_sv = p[1], p[2] or not p[3]
end
local retry = plans_differ(meta[4], ARGV[2], ARGV[6], pooled, pool_plan, ARGV[7])
if retry then
  return retry
end
local now = clock_ms(ARGV[1], meta[1])
local now_s = math.floor(now / 1000)
if not meta[5] and meta[1] then
  migrate(state, tb)
end
if pooled and not pool_sv then
  migrate(pool_state, tag .. 'pool:')
end
reclaim(tag, now, ARGV[3], ARGV[4], pooled, '')

local features, i = read_features(8)
local specs, pool_specs
specs, i = read_specs(i)
pool_specs = read_specs(i)

-- Load one scope's limits; per calendar limit also every listed feature's cost this period.
local function load(scope_state, wbase, list, listed)
  for _, L in ipairs(list) do
    if L.cal then
      local names = { L.fe, L.fc, L.fr, L.fq, L.fa, L.fb }
      for _, f in ipairs(listed) do
        names[#names + 1] = L.fg .. f[1]
      end
      local v = redis.call('HMGET', scope_state, unpack(names))
      cal_load(L, scope_state, now_s, v, 0)
      L.features = {}
      for k = 1, #listed do
        L.features[k] = L.rolled == true and '0' or fmt(num(v[6 + k]))
      end
    else
      sl_load(L, wbase .. L.wkey, now_s)
    end
  end
end
load(state, tb, specs, features)

local v = redis.call('HMGET', state, 'plan', 'k', 'held', 'nh')
local killed_features = {}
-- Feature kill switches are few (set by operators); the state hash has a bounded field count.
for _, field in ipairs(redis.call('HKEYS', state)) do
  if string.sub(field, 1, 2) == 'k:' then
    killed_features[#killed_features + 1] = string.sub(field, 3)
  end
end
local pool_held = 0
if pooled then
  pool_held = num(redis.call('HGET', pool_state, 'held'))
  load(pool_state, tag .. 'pool:', pool_specs, {})
end
local reply = { 'status', 0, fmt(now), v[1] or ARGV[2], v[2] and '1' or '0', fmt(num(v[3])),
  fmt(num(v[4])), table.concat(killed_features, ','), pool_plan or '', fmt(pool_held) }
local function add(L, with_features)
  local resets = L.resets
  if not L.cal then
    resets = sl_resets(L)
  end
  for _, x in ipairs({ fmt(L.used), fmt(L.requests), fmt(L.carried), fmt(resets) }) do
    reply[#reply + 1] = x
  end
  if with_features then
    for k = 1, #features do
      reply[#reply + 1] = L.cal and L.features[k] or '-'
    end
  end
end
for _, L in ipairs(specs) do
  add(L, true)
end
if pooled then
  for _, L in ipairs(pool_specs) do
    add(L, false)
  end
end
return reply
