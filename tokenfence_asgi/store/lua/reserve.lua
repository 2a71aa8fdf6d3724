-- RESERVE: check every limit of the tenant's plan (and of its pool), the kill switches and the
-- feature shares, and hold the first candidate amount that fits. Decides first, then writes: a
-- refused call changes nothing but housekeeping (reclaimed holds, dropped sliding buckets, a
-- period that started, the 100% alert mark) and the refusal count of the tenant's daily usage.
-- The plans are compiled into the script (tokenfence_asgi/store/compiled.py): plan_named()
-- gives a plan's limits, feature_ppm() and plan_features() its feature weights, and the fence's
-- settings are constants (HOLD_MS, RECLAIM, RECORD_TTL, USAGE_DAYS, MAX_OPEN, DEFAULT_PLAN), so
-- a call sends only ids, the feature, the plans it assumed and the amounts.
-- A tenant's open holds are bounded (MAX_OPEN, after expired ones are reclaimed): every hold is
-- a record and a member of the tag's holds, and a $0 hold is limited by no budget, so without
-- the bound one tenant could grow the store without end. It holds in shadow mode too.
-- The alerts an admitted call raised are kept in its record (field 'ra') and reported again by
-- a repeat of the call (same id), which a client sends when the first reply was lost.
-- Feature shares cost the same whatever the number of features: each calendar cost limit keeps
-- the sum of the features' unused guarantees (':s'), moved by this feature's part only; the
-- sums are recomputed from every feature when the plan version or the period changed.
--
-- KEYS[1] state: tenant state TB.."s"
-- KEYS[2] record: reservation record TB.."r:"..id
-- KEYS[3] holds: holds of the tag TAG.."h"
-- KEYS[4] pool_state?: pool state TAG.."pool:s" (pool members only)
-- ARGV[1] now_ms: integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2] plan: the tenant's plan the caller assumed
-- ARGV[3] tenant: tenant id (encoded)
-- ARGV[4] reservation: reservation id (encoded)
-- ARGV[5] feature: feature (encoded) or ''
-- ARGV[6] pool: the pool the caller assumed (encoded) or ''
-- ARGV[7] pool_plan: the pool's plan the caller assumed, or ''
-- ARGV[8] enforce: '1' enforce, '0' shadow mode (decide and record, never refuse), '2' enforce
--   and leave a budget or open-holds refusal uncounted (the caller tries once more)
-- ARGV[9] candidates...: a count, then amounts in integer nano-dollars, in order of preference
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
local tenant, feature = ARGV[3], ARGV[5]
local pooled = pool_state ~= nil
local P = plan_named(ARGV[2]) or plan_named(DEFAULT_PLAN)
local limits = P.limits
local ppm = nil -- the feature's weight when the plan lists it
if feature ~= '' and P.nf > 0 then
  ppm = feature_ppm(P.name, feature)
end
local hf_field = ppm and 'hf:' .. feature or 'hf:'

-- One read of the tenant's state: meta (t, plan, k, loc, pool, sv, held, nh, rv, lt), every
-- calendar limit's counters and share sum (the compiled list), this feature's kill switch,
-- held amount and cost in each calendar cost limit.
local fields = P.fields
local n_fields = #fields
fields[n_fields + 1] = 'k:' .. feature
fields[n_fields + 2] = hf_field
if ppm then
  for _, L in ipairs(limits) do
    if L.is > 0 then
      L.fgf = L.fg .. feature
      fields[#fields + 1] = L.fgf
      L.ig = #fields
    end
  end
end
local v = redis.call('HMGET', state, unpack(fields))
local elsewhere = moved(v[4], v[5], ARGV[6])
if elsewhere then
  return { 'moved', 0, elsewhere }
end
local now = clock_ms(ARGV[1], v[1])
local now_s = math.floor(now / 1000)

-- The pool's state: its plan, held total and calendar counters.
local PP, pv, pool_fields
if pooled then
  PP = plan_named(ARGV[7]) or plan_named(DEFAULT_PLAN)
  if ARGV[7] == '' then
    PP = { limits = {} }
  end
  pool_fields = PP.pfields or { 'plan', 'held', 'sv' }
  pv = redis.call('HMGET', pool_state, unpack(pool_fields))
end
local retry = plans_differ(v[2], DEFAULT_PLAN, ARGV[2], pooled, pooled and pv[1], ARGV[7])
if retry then
  return retry
end
if v[3] then
  return { 'killed', 0, 'tenant' }
end
if feature ~= '' and v[n_fields + 1] then
  return { 'killed', 0, 'feature' }
end

local tag = string.sub(holds, 1, -2)
local tb = string.sub(state, 1, -2)
local migrated = false
if not v[6] and v[1] then
  migrate(state, tb) -- written by the previous layout: converted once
  migrated = true
end
if pooled and not pv[3] and pv[2] then
  migrate(pool_state, tag .. 'pool:')
  pv = redis.call('HMGET', pool_state, unpack(pool_fields))
end
if reclaim(tag, now, RECLAIM, RECORD_TTL, pooled, tenant) or migrated then
  v = redis.call('HMGET', state, unpack(fields))
  if pooled then
    pv = redis.call('HMGET', pool_state, unpack(pool_fields))
  end
end

-- A retried reserve with the same id gets the same hold, never a second one, and the alerts
-- the first call raised (its reply may have been lost).
if redis.call('EXISTS', record) == 1 then
  local existing = redis.call('HMGET', record, 's', 'a', 'e', 'i', 'ra')
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

local held, open, held_f = num(v[7]), num(v[8]), num(v[n_fields + 2])
if MAX_OPEN and open >= MAX_OPEN then
  -- Expired holds were reclaimed above (up to the reclaim budget, so every call at the bound
  -- frees places while any are left). The refusal says when the earliest of the tenant's holds
  -- expires (the tag's first 16 holds are looked at, bounded work; else one lease from now).
  local prefix = tenant .. '/'
  local first = now + HOLD_MS
  local members = redis.call('ZRANGE', holds, '0', '15', 'WITHSCORES')
  for k = 1, #members, 2 do
    if string.sub(members[k], 1, #prefix) == prefix then
      first = tonumber(members[k + 1])
      break
    end
  end
  if ARGV[8] ~= '2' then
    day_add(tb, now, 0, 0, 1, 0, 0, 0, '', v[2] or DEFAULT_PLAN, USAGE_DAYS)
  end
  return { 'holds', 0, 'tenant', 'open_holds', fmt(open), fmt(MAX_OPEN), fmt(first) }
end

-- Counters of every limit. Shares: this feature's part of each sum, or all sums from scratch.
local recompute = limits_load(P, state, tb, v, now_s, ppm, feature, held_f, plan_features)
local pool_held = 0
if pooled then
  pool_held = pool_limits_load(PP, pool_state, pv, tag .. 'pool:', now_s)
end

local alerts = {}
local refusal = nil

local function requests_refusal(scope, list)
  for _, L in ipairs(list) do
    if L.n >= 0 and L.requests + 1 > L.n then
      local resets = L.resets
      if not L.cal then
        resets = sl_resets(L)
      end
      return { 'requests', scope, L.w, fmt(L.requests), fmt(L.n), fmt(resets) }
    end
  end
  return nil
end
refusal = requests_refusal('tenant', limits) or (pooled and requests_refusal('pool', PP.limits))

-- The first limit a candidate amount fails, or nil. Feature rules (tenant calendar cost limits):
-- share mode keeps every other listed feature's unused guarantee free; cap mode also caps the
-- feature at its own guarantee. Unlisted features have weight 0.
local cap_mode = P.mode == 'cap'
local function fails(amount)
  for _, L in ipairs(limits) do
    if L.m >= 0 then
      if L.used + held + amount > L.limit then
        return 'tenant', L, held, 'limit'
      end
      if L.is > 0 then
        if L.used + held + amount + L.shares - L.term > L.limit then
          return 'tenant', L, held, 'share'
        end
        if cap_mode then
          local guarantee = ppm and share(L.limit, ppm) or 0
          if L.fused + held_f + amount > guarantee then
            return 'tenant', L, held_f, 'cap'
          end
        end
      end
    end
  end
  if pooled then
    for _, L in ipairs(PP.limits) do
      if L.m >= 0 and L.used + pool_held + amount > L.limit then
        return 'pool', L, pool_held, 'limit'
      end
    end
  end
  return nil
end

local chosen = nil
local amount, amount_s = 0, nil
local failed = nil
local n_candidates = tonumber(ARGV[9])
-- A call refused by a request limit is not priced against the cost limits.
for k = 1, refusal and 0 or n_candidates do
  amount = tonumber(ARGV[9 + k])
  local scope, L, scope_held, reason = fails(amount)
  if not scope then
    chosen, amount_s = k, ARGV[9 + k]
    break
  end
  failed = { scope = scope, L = L, held = scope_held, reason = reason, amount = amount }
end
if not chosen and failed then
  -- No candidate fits: refused by the limit the last (cheapest) candidate failed.
  local L = failed.L
  local resets = L.resets
  if not L.cal then
    resets = sl_resets(L)
  end
  local used, limit = L.used, L.limit
  if failed.reason == 'cap' then
    used = L.fused
    limit = ppm and share(L.limit, ppm) or 0
  end
  refusal = { 'budget', failed.scope, L.w, fmt(used), fmt(failed.held), fmt(limit),
    fmt(resets), fmt(failed.amount), fmt(L.carried), failed.reason }
  -- A limit that open holds and spend have filled is at 100%: reported once per window. (A
  -- call refused only because it is large reports nothing: the limit is not reached.)
  if failed.reason == 'limit' and L.alert < 100 and L.used + failed.held >= L.limit then
    alerts[#alerts + 1] = failed.scope .. '|' .. L.w .. '|cost|100|'
      .. fmt(L.used + failed.held) .. '|' .. fmt(L.limit)
    L.alert = 100
    L.alert_changed = true
  end
end

-- Field/value pairs of a scope's calendar counters: a period that started and a raised 100%
-- mark; on a refusal (`admitted` false) only for a limit whose mark was raised, so a refused
-- call starts no period (a scope's first period stays the first one it spent in).
local function scope_args(list, admitted)
  local args = {}
  for _, L in ipairs(list) do
    if L.cal and (admitted or L.alert_changed) then
      cal_rolled(args, L)
      if L.alert_changed and L.rolled ~= true then
        args[#args + 1] = L.fa
        args[#args + 1] = fmt(L.alert)
      end
    end
  end
  return args
end

local enforce = ARGV[8] ~= '0'
if refusal and enforce then
  -- A refusal is counted in the tenant's daily usage (it charges nothing).
  if ARGV[8] == '1' or refusal[1] ~= 'budget' then
    day_add(tb, now, 0, 0, 1, 0, 0, 0, day_limit(limits), v[2] or DEFAULT_PLAN, USAGE_DAYS)
  end
  -- Store a period that started (its date maths is done) and the 100% alert marks, so each
  -- is reported once per window.
  local args = scope_args(limits, false)
  if recompute then
    args[#args + 1] = 'rv'
    args[#args + 1] = P.ver
    for _, L in ipairs(limits) do
      if L.is > 0 then
        args[#args + 1] = L.fs
        args[#args + 1] = fmt(L.shares)
      end
    end
  end
  if #args > 0 then
    if not v[6] then
      args[#args + 1] = 'sv'
      args[#args + 1] = '2'
    end
    redis.call('HSET', state, unpack(args))
  end
  if pooled then
    local pool_args = scope_args(PP.limits, false)
    if #pool_args > 0 then
      pool_args[#pool_args + 1] = 'sv'
      pool_args[#pool_args + 1] = '2'
      redis.call('HSET', pool_state, unpack(pool_args))
    end
  end
  for _, list in ipairs({ limits, pooled and PP.limits or {} }) do
    for _, L in ipairs(list) do
      if L.alert_changed and not L.cal then
        sl_mark(L, 'A', L.alert)
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
  amount_s = ARGV[9 + chosen]
  amount = tonumber(amount_s)
end

-- Admit: count the request in every limit, raise the holds, write the record.
local function admit(scope, list)
  for _, L in ipairs(list) do
    L.requests = L.requests + 1
    local level = L.ralert
    if L.n >= 0 then
      level = crossed(alerts, scope, L, 'requests', L.requests, L.n, L.ralert)
    end
    L.ralert_changed = level ~= L.ralert
    L.ralert = level
  end
  local args = scope_args(list, true)
  for _, L in ipairs(list) do
    if L.cal then
      if L.rolled ~= true then
        args[#args + 1] = L.fr
        args[#args + 1] = fmt(L.requests)
        if L.ralert_changed then
          args[#args + 1] = L.fb
          args[#args + 1] = fmt(L.ralert)
        end
      end
    else
      sl_add(L, '0', 0, 1)
      if L.ralert_changed then
        sl_mark(L, 'B', L.ralert)
      end
      if L.alert_changed then
        sl_mark(L, 'A', L.alert)
      end
    end
  end
  return args
end

local expires = now + HOLD_MS
local expires_s = fmt(expires)
local chosen_s = chosen == 1 and '1' or fmt(chosen)
local args = admit('tenant', limits)
args[#args + 1] = 'held'
args[#args + 1] = fmt(held + amount)
args[#args + 1] = 't'
args[#args + 1] = fmt(now)
args[#args + 1] = 'nh'
args[#args + 1] = fmt(open + 1)
if not v[6] then
  args[#args + 1] = 'sv'
  args[#args + 1] = '2'
end
local fl = '0'
if ppm then
  fl = '1'
  args[#args + 1] = hf_field
  args[#args + 1] = fmt(held_f + amount)
end
if P.nf > 0 then
  if recompute then
    args[#args + 1] = 'rv'
    args[#args + 1] = P.ver
  end
  for _, L in ipairs(limits) do
    if L.is > 0 then
      if ppm then -- this feature's held amount grew: its unused guarantee shrank
        local term = shares_term(L.limit, ppm, L.fused, held_f + amount)
        L.shares = L.shares - L.term + term
        args[#args + 1] = L.fs
        args[#args + 1] = fmt(L.shares)
      elseif recompute then
        args[#args + 1] = L.fs
        args[#args + 1] = fmt(L.shares)
      end
    end
  end
end
redis.call('HSET', state, unpack(args))
if pooled then
  local pool_args = admit('pool', PP.limits)
  pool_args[#pool_args + 1] = 'held'
  pool_args[#pool_args + 1] = fmt(pool_held + amount)
  pool_args[#pool_args + 1] = 'sv'
  pool_args[#pool_args + 1] = '2'
  redis.call('HSET', pool_state, unpack(pool_args))
end
if #alerts > 0 then
  redis.call('HSET', record, 's', 'h', 'a', amount_s, 'e', expires_s, 'i', chosen_s,
    'f', feature, 'fl', fl, 'ra', table.concat(alerts, ';'))
else
  redis.call('HSET', record, 's', 'h', 'a', amount_s, 'e', expires_s, 'i', chosen_s,
    'f', feature, 'fl', fl)
end
redis.call('ZADD', holds, expires_s, tenant .. '/' .. ARGV[4])

if #alerts == 0 and not refusal then
  return { 'ok', 0, chosen_s, amount_s, expires_s, 'new' }
end
local reply = { 'ok', #alerts }
for _, a in ipairs(alerts) do
  reply[#reply + 1] = a
end
for _, x in ipairs({ chosen_s, amount_s, expires_s, 'new' }) do
  reply[#reply + 1] = x
end
if refusal then
  for _, x in ipairs(refusal) do
    reply[#reply + 1] = x
  end
end
return reply
