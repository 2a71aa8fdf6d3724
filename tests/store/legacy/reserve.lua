-- RESERVE: check every limit of the tenant's plan (and of its pool), the kill switches and the
-- feature shares, and hold the first candidate amount that fits. Decides first, then writes: a
-- refused call changes nothing but housekeeping (reclaimed holds, dropped sliding buckets, the
-- 100% alert mark) and the refusal count of the tenant's daily usage.
-- A tenant's open holds are bounded (ARGV[15], after expired ones are reclaimed): every hold is
-- a record and a member of the tag's holds, and a $0 hold is limited by no budget, so without
-- the bound one tenant could grow the store without end. It holds in shadow mode too.
-- The alerts an admitted call raised are kept in its record (field 'ra') and reported again by
-- a repeat of the call (same id), which a client sends when the first reply was lost.
--
-- KEYS[1] state: tenant state TB.."s"
-- KEYS[2] record: reservation record TB.."r:"..id
-- KEYS[3] holds: holds of the tag TAG.."h"
-- KEYS[4] pool_state?: pool state TAG.."pool:s" (pool members only)
-- ARGV[1] now_ms: integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2] plan: the tenant's plan the caller assumed
-- ARGV[3] default_plan: the plan of a tenant without one
-- ARGV[4] tenant: tenant id (encoded)
-- ARGV[5] reservation: reservation id (encoded)
-- ARGV[6] feature: feature (encoded) or ''
-- ARGV[7] hold_ms: hold lease, integer ms
-- ARGV[8] reclaim: most expired holds reclaimed by this call
-- ARGV[9] record_ttl_s: record ttl after settling, integer seconds
-- ARGV[10] pool: the pool the caller assumed (encoded) or ''
-- ARGV[11] pool_plan: the pool's plan the caller assumed, or ''
-- ARGV[12] enforce: '1' enforce, '0' shadow mode (decide and record, never refuse)
-- ARGV[13] feature_mode: 'share' | 'cap' | ''
-- ARGV[14] usage_days: days of daily usage kept
-- ARGV[15] max_open_holds: most open holds the tenant may have, or '' for no bound
-- ARGV[16] specs_and_candidates...: features (a count, then (name, weight ppm) pairs), the
--          tenant's limit specs, the pool's limit specs (see read_specs), and the candidates:
--          a count, then amounts in integer nano-dollars, in order of preference
--
-- Every reply is {kind, number of alerts A, A alert strings, details...}:
--   ok:        candidate index (1-based), amount, lease expiry ms, 'new' | 'existing',
--              then for shadow mode the refusal it would have been ('requests'|'budget', ...);
--              'existing' repeats the alerts the first call raised
--   plan:      the tenant's stored plan (the caller assumed another; retry)
--   pool_plan: the pool's stored plan;   moved: where the tenant lives now ('-' = own tag)
--   killed:    'tenant' | 'feature';     duplicate: the state of the settled id
--   requests:  scope, window, requests, max requests, resets s
--   holds:     'tenant', 'open_holds', open holds, the bound, when the tenant's earliest hold
--              expires (ms)
--   budget:    scope, window, used, held, effective limit, resets s, amount, carried, reason
--              (reason: 'limit' | 'share' | 'cap')
local state, record, holds, pool_state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tag = string.sub(holds, 1, -2)
local tb = string.sub(state, 1, -2)
local feature = ARGV[6]

local meta = redis.call('HMGET', state, 't', 'plan', 'k', 'k:' .. feature, 'loc', 'pool')
local elsewhere = moved(meta[5], meta[6], ARGV[10])
if elsewhere then
  return { 'moved', 0, elsewhere }
end
local now = clock_ms(ARGV[1], meta[1])
local now_s = math.floor(now / 1000)
local retry = plans_differ(meta[2], ARGV[3], ARGV[2], pool_state, ARGV[11])
if retry then
  return retry
end
local pooled = pool_state ~= nil
if meta[3] then
  return { 'killed', 0, 'tenant' }
end
if feature ~= '' and meta[4] then
  return { 'killed', 0, 'feature' }
end

local done_ttl = ARGV[9]
reclaim(tag, now, tonumber(ARGV[8]), done_ttl, pooled)

-- A retried reserve with the same id gets the same hold, never a second one, and the alerts
-- the first call raised (its reply may have been lost).
local existing = redis.call('HMGET', record, 's', 'a', 'e', 'i', 'ra')
if existing[1] then
  if existing[1] == 'h' then
    local reply = { 'ok', 0 }
    if existing[5] then
      for a in string.gmatch(existing[5], '[^;]+') do
        reply[#reply + 1] = a
      end
      reply[2] = #reply - 2
    end
    for _, x in ipairs({ existing[4], existing[2], existing[3], 'existing' }) do
      reply[#reply + 1] = x
    end
    return reply
  end
  return { 'duplicate', 0, existing[1] }
end

local hf_field = 'hf:' .. feature
local hv = redis.call('HMGET', state, 'held', hf_field, 'nh')
local held, held_f, open = num(hv[1]), num(hv[2]), num(hv[3])
local max_open = tonumber(ARGV[15])
if max_open and open >= max_open then
  -- Expired holds were reclaimed above (up to the reclaim budget, so every call at the bound
  -- frees places while any are left). The refusal says when the earliest of the tenant's holds
  -- expires (the tag's first 16 holds are looked at, bounded work; else one lease from now).
  local prefix = ARGV[4] .. '/'
  local first = now + tonumber(ARGV[7])
  local members = redis.call('ZRANGE', holds, '0', '15', 'WITHSCORES')
  for k = 1, #members, 2 do
    if string.sub(members[k], 1, #prefix) == prefix then
      first = tonumber(members[k + 1])
      break
    end
  end
  day_add(tb, now, 0, 0, 1, 0, 0, 0, '', meta[2] or ARGV[3], tonumber(ARGV[14]))
  return { 'holds', 0, 'tenant', 'open_holds', fmt(open), fmt(max_open), fmt(first) }
end

local mode = ARGV[13]
local features, i = read_features(16)
local specs, pool_specs, candidates
specs, i = read_specs(i)
pool_specs, i = read_specs(i)
local listed = nil
for _, f in ipairs(features) do
  if f.name == feature then
    listed = f
  end
end

local pool_held = 0
if pooled then
  pool_held = num(redis.call('HGET', pool_state, 'held'))
end
load_scope(state, tb, specs, now_s, #features > 0 and features or nil)
if pooled then
  load_scope(pool_state, tag .. 'pool:', pool_specs, now_s, nil)
end

local alerts = {}
local refusal = nil

local function requests_refusal(scope, list)
  for _, s in ipairs(list) do
    if s.max_requests >= 0 and s.requests + 1 > s.max_requests then
      local resets = s.resets
      if s.kind == 's' then
        resets = sliding_resets(s)
      end
      return { 'requests', scope, s.window, fmt(s.requests), fmt(s.max_requests), fmt(resets) }
    end
  end
  return nil
end
refusal = requests_refusal('tenant', specs) or (pooled and requests_refusal('pool', pool_specs))

-- Held amounts of every listed feature, for the share rule.
local hv_f = {}
if #features > 0 then
  local names = {}
  for k, f in ipairs(features) do
    names[k] = 'hf:' .. f.name
  end
  local v = redis.call('HMGET', state, unpack(names))
  for k, f in ipairs(features) do
    hv_f[f.name] = v[k]
  end
end

-- The first limit a candidate amount fails, or nil. Feature rules (tenant calendar cost limits):
-- share mode keeps every other listed feature's unused guarantee free; cap mode also caps the
-- feature at its own guarantee. Unlisted features have weight 0.
local function fails(amount)
  for _, s in ipairs(specs) do
    if s.max_cost >= 0 then
      if s.used + held + amount > s.limit then
        return 'tenant', s, held, 'limit'
      end
      if s.kind == 'c' and #features > 0 then
        local reserved = 0
        for _, g in ipairs(features) do
          if g ~= listed then
            local free = share(s.limit, g.ppm) - s.fused[g.name] - num(hv_f and hv_f[g.name])
            if free > 0 then
              reserved = reserved + free
            end
          end
        end
        if s.used + held + amount + reserved > s.limit then
          return 'tenant', s, held, 'share'
        end
        if mode == 'cap' then
          local mine = listed and s.fused[listed.name] or 0
          local guarantee = listed and share(s.limit, listed.ppm) or 0
          if mine + held_f + amount > guarantee then
            return 'tenant', s, held_f, 'cap'
          end
        end
      end
    end
  end
  if pooled then
    for _, s in ipairs(pool_specs) do
      if s.max_cost >= 0 and s.used + pool_held + amount > s.limit then
        return 'pool', s, pool_held, 'limit'
      end
    end
  end
  return nil
end

local chosen = nil
local amount = 0
local failed = nil
local n_candidates = tonumber(ARGV[i])
-- A call refused by a request limit is not priced against the cost limits.
for k = 1, refusal and 0 or n_candidates do
  amount = tonumber(ARGV[i + k])
  local scope, s, scope_held, reason = fails(amount)
  if not scope then
    chosen = k
    break
  end
  failed = { scope = scope, s = s, held = scope_held, reason = reason, amount = amount }
end
if not chosen and failed then
  -- No candidate fits: refused by the limit the last (cheapest) candidate failed.
  local s = failed.s
  local resets = s.resets
  if s.kind == 's' then
    resets = sliding_resets(s)
  end
  local used, limit = s.used, s.limit
  if failed.reason == 'cap' then
    used = s.fused[listed and listed.name or ''] or 0
    limit = listed and share(s.limit, listed.ppm) or 0
  end
  refusal = { 'budget', failed.scope, s.window, fmt(used), fmt(failed.held), fmt(limit),
    fmt(resets), fmt(failed.amount), fmt(s.carried), failed.reason }
  -- A limit that open holds and spend have filled is at 100%: reported once per window. (A
  -- call refused only because it is large reports nothing: the limit is not reached.)
  if failed.reason == 'limit' and s.alert < 100 and s.used + failed.held >= s.limit then
    alerts[#alerts + 1] = failed.scope .. '|' .. s.window .. '|cost|100|'
      .. fmt(s.used + failed.held) .. '|' .. fmt(s.limit)
    s.alert = 100
    s.alert_changed = true
  end
end

local enforce = ARGV[12] == '1'
if refusal and enforce then
  -- A refusal is counted in the tenant's daily usage (it charges nothing).
  day_add(tb, now, 0, 0, 1, 0, 0, 0, day_limit(specs), meta[2] or ARGV[3], tonumber(ARGV[14]))
  -- Store only the 100% alert marks, so each is reported once per window.
  for _, pair in ipairs({ { state, specs }, { pool_state, pool_specs } }) do
    for _, s in ipairs(pair[2] or {}) do
      if s.alert_changed then
        if s.kind == 'c' then
          local args = {}
          calendar_fields(args, s)
          redis.call('HSET', pair[1], unpack(args))
        else
          sliding_mark(s, 'a', s.alert)
        end
      end
    end
  end
  local reply = { refusal[1], #alerts }
  for _, a in ipairs(alerts) do
    reply[#reply + 1] = a
  end
  for k = 2, #refusal do
    reply[#reply + 1] = refusal[k]
  end
  return reply
end
if not chosen then
  chosen = n_candidates -- shadow mode: hold the last (cheapest) candidate
  amount = tonumber(ARGV[i + chosen])
end

-- Admit: count the request in every limit, raise the holds, write the record.
local function admit(scope, scope_state, list)
  local args = {}
  for _, s in ipairs(list) do
    s.requests = s.requests + 1
    if s.max_requests >= 0 then
      local level = crossed(alerts, scope, s, 'requests', s.requests, s.max_requests, s.ralert)
      if level ~= s.ralert then
        s.ralert = level
        if s.kind == 's' then
          sliding_mark(s, 'b', level)
        end
      end
    end
    if s.kind == 'c' then
      calendar_fields(args, s)
    else
      sliding_add(s, 0, 1)
      if s.alert_changed then
        sliding_mark(s, 'a', s.alert)
      end
    end
  end
  return args
end

local expires = now + tonumber(ARGV[7])
local args = admit('tenant', state, specs)
args[#args + 1] = 'held'
args[#args + 1] = fmt(held + amount)
args[#args + 1] = 't'
args[#args + 1] = fmt(now)
args[#args + 1] = 'nh'
args[#args + 1] = fmt(open + 1)
local fl = '0'
if listed then
  args[#args + 1] = hf_field
  args[#args + 1] = fmt(held_f + amount)
  fl = '1'
end
redis.call('HSET', state, unpack(args))
if pooled then
  local pool_args = admit('pool', pool_state, pool_specs)
  pool_args[#pool_args + 1] = 'held'
  pool_args[#pool_args + 1] = fmt(pool_held + amount)
  redis.call('HSET', pool_state, unpack(pool_args))
end
if #alerts > 0 then
  redis.call('HSET', record, 's', 'h', 'a', fmt(amount), 'e', fmt(expires), 'i', fmt(chosen),
    'f', feature, 'fl', fl, 'ra', table.concat(alerts, ';'))
else
  redis.call('HSET', record, 's', 'h', 'a', fmt(amount), 'e', fmt(expires), 'i', fmt(chosen),
    'f', feature, 'fl', fl)
end
redis.call('ZADD', holds, fmt(expires), ARGV[4] .. '/' .. ARGV[5])

local reply = { 'ok', #alerts }
for _, a in ipairs(alerts) do
  reply[#reply + 1] = a
end
for _, x in ipairs({ fmt(chosen), fmt(amount), fmt(expires), 'new' }) do
  reply[#reply + 1] = x
end
if refusal then
  for _, x in ipairs(refusal) do
    reply[#reply + 1] = x
  end
end
return reply
