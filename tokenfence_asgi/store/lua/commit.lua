-- COMMIT: replace a hold with the actual cost. Idempotent: the first commit or release of an
-- id settles it; later ones change nothing. A commit after the lease ran out still charges the
-- actual cost (the money was spent) and is flagged late; so is one for an id the store no
-- longer knows (its record expired, or was lost in a failover before it replicated).
-- Crossing 50%, 80% or 100% of a cost limit is reported once per window per threshold; the
-- alerts a commit raised are kept in its record (field 'ca') and reported again by a repeat of
-- that commit, which a client sends when the first reply was lost.
-- The plans and the fence's settings are compiled into the script, as for RESERVE (RECORD_TTL,
-- RECLAIM, DEFAULT_PLAN, USAGE_DAYS, LEDGER_MAXLEN: approximate ledger stream length, ''
-- unbounded, '0' no ledger stream; LEDGER_RETENTION: ms, or '' to keep entries by length only).
--
-- KEYS[1] state: tenant state TB.."s"
-- KEYS[2] record: reservation record TB.."r:"..id
-- KEYS[3] holds: holds of the tag TAG.."h"
-- KEYS[4] pool_state?: pool state TAG.."pool:s" (pool members only)
-- ARGV[1] now_ms: integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2] tenant: tenant id (encoded)
-- ARGV[3] reservation: reservation id (encoded)
-- ARGV[4] cost: actual cost, integer nano-dollars
-- ARGV[5] feature: feature (encoded) or '', used when the record is unknown
-- ARGV[6] input_tokens: input tokens
-- ARGV[7] output_tokens: output tokens
-- ARGV[8] pool: the pool the caller assumed (encoded) or ''
-- ARGV[9] follow_stubs: '1' to follow a forwarding stub of a moved hold, '0' not to
-- ARGV[10] plan: the tenant's plan the caller assumed
-- ARGV[11] pool_plan: the pool's plan the caller assumed, or ''
-- ARGV[12] model: model requested or ''
-- ARGV[13] model_used: model used, '' when the same as requested
-- ARGV[14] request_id: request id or ''
--
-- Every commit that charges writes, in the same script: one entry in the ledger stream TAG.."l"
-- (fields t tenant, id reservation, f feature (encoded), m model requested, u model used or ''
-- when the same, i / o input / output tokens, c cost nanos, ts time ms, q request id, l '1'
-- late), and adds to the tenant's daily usage TB.."d". A duplicate writes neither.
--
-- Replies: {'committed', A, A alerts, cost, 'late' | 'on_time', released hold}
--          {'duplicate', A, the alerts the earlier commit raised, state of the earlier
--           settlement, cost charged then}
--          {'moved', 0, where the tenant or the hold moved to ('-' = own tag), 'tenant'|'record'}
--          {'plan' | 'pool_plan', 0, the stored plan}   the caller assumed another: retry
local state, record, holds, pool_state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tenant, id = ARGV[2], ARGV[3]
local pooled = pool_state ~= nil

-- A settled id stays settled, even after the tenant moved to another pool.
local rec = redis.call('HMGET', record, 'a', 's', 'f', 'fl', 'c', 'to', 'ca')
if rec[2] == 'c' or rec[2] == 'r' then
  local reply = { 'duplicate', 0 }
  if rec[7] then
    for a in string.gmatch(rec[7], '[^;]+') do
      reply[#reply + 1] = a
    end
    reply[2] = #reply - 2
  end
  reply[#reply + 1] = rec[2]
  reply[#reply + 1] = rec[5] or '0'
  return reply
end
-- A stub forwards to where the hold moved with its tenant; it is not followed when the caller
-- came here following the tenant itself (the hold then ran out elsewhere, see below).
if rec[2] == 'm' and ARGV[9] == '1' then
  return { 'moved', 0, rec[6], 'record' }
end

local feature = rec[3] or ARGV[5]
local P = plan_named(ARGV[10]) or plan_named(DEFAULT_PLAN)
local limits = P.limits
local ppm = nil
if feature ~= '' and P.nf > 0 then
  ppm = feature_ppm(P.name, feature)
end
-- One read of the tenant's state: meta (t, plan, k, loc, pool, sv, held, nh, rv, lt), every
-- calendar limit's counters and share sum (the compiled list), the feature's held amount and
-- cost in each calendar cost limit.
local fields = P.fields
local n_fields = #fields
fields[n_fields + 1] = 'hf:' .. feature
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
local elsewhere = moved(v[4], v[5], ARGV[8])
if elsewhere then
  if rec[2] == 'x' or not rec[2] then
    -- The cost will be charged where the tenant lives now: leave a stub pointing there, so
    -- a repeat of this commit finds that charge even after the tenant comes back here.
    redis.call('DEL', record)
    redis.call('HSET', record, 's', 'm', 'to', elsewhere)
    redis.call('EXPIRE', record, RECORD_TTL)
  end
  return { 'moved', 0, elsewhere, 'tenant' }
end

local PP, pv, pool_fields
if pooled then
  PP = plan_named(ARGV[11]) or plan_named(DEFAULT_PLAN)
  if ARGV[11] == '' then
    PP = { limits = {} }
  end
  pool_fields = PP.pfields or { 'plan', 'held', 'sv' }
  pv = redis.call('HMGET', pool_state, unpack(pool_fields))
end
-- The caller prices against the plans the store holds, or retries (nothing written yet).
local retry = plans_differ(v[2], DEFAULT_PLAN, ARGV[10], pooled, pooled and pv[1], ARGV[11])
if retry then
  return retry
end
local now = clock_ms(ARGV[1], v[1])
local now_s = math.floor(now / 1000)
local cost = tonumber(ARGV[4])
local cost_s = ARGV[4]
local tag = string.sub(holds, 1, -2)
local tb = string.sub(state, 1, -2)

local migrated = false
if not v[6] and v[1] then
  migrate(state, tb)
  migrated = true
end
if pooled and not pv[3] and pv[2] then
  migrate(pool_state, tag .. 'pool:')
  pv = redis.call('HMGET', pool_state, unpack(pool_fields))
end
if reclaim(tag, now, RECLAIM, RECORD_TTL, pooled, tenant) or migrated then
  v = redis.call('HMGET', state, unpack(fields))
  rec = redis.call('HMGET', record, 'a', 's', 'f', 'fl', 'c')
  if pooled then
    pv = redis.call('HMGET', pool_state, unpack(pool_fields))
  end
end
local status, released, late = rec[2], 0, 'late'
if status == 'm' then
  status = nil -- a stale stub: the hold it forwarded to ran out; charge the cost here
  redis.call('DEL', record)
end

-- Counters before this commit; shares as for RESERVE.
local held, open, held_f = num(v[7]), num(v[8]), num(v[n_fields + 1])
local recompute = limits_load(P, state, tb, v, now_s, ppm, feature, held_f, plan_features)
local pool_held = 0
if pooled then
  pool_held = pool_limits_load(PP, pool_state, pv, tag .. 'pool:', now_s)
end

-- The hold goes (its amount leaves the held totals), the cost is charged.
local args = { 't', fmt(now) }
if status == 'h' then
  released = num(rec[1])
  late = 'on_time'
  held, open = held - released, open - 1
  args[#args + 1] = 'held'
  args[#args + 1] = fmt(held)
  args[#args + 1] = 'nh'
  args[#args + 1] = fmt(open)
  if rec[4] == '1' then
    held_f = held_f - released
    args[#args + 1] = 'hf:' .. feature
    args[#args + 1] = fmt(held_f)
  end
  pool_held = pool_held - released
end

local alerts = {}
local function charge(scope, list, scope_args)
  for _, L in ipairs(list) do
    L.used = L.used + cost
    if L.used > MAX_COUNTER then
      error('tokenfence: counter overflow in window ' .. L.w)
    end
    local level = L.alert
    if L.m >= 0 then
      level = crossed(alerts, scope, L, 'cost', L.used, L.limit, L.alert)
    end
    L.alert_changed = level ~= L.alert
    L.alert = level
    if L.cal then
      cal_rolled(scope_args, L)
      if L.rolled ~= true then
        scope_args[#scope_args + 1] = L.fc
        scope_args[#scope_args + 1] = fmt(L.used)
        if L.alert_changed then
          scope_args[#scope_args + 1] = L.fa
          scope_args[#scope_args + 1] = fmt(L.alert)
        end
      end
    end
  end
end
charge('tenant', limits, args)
local pool_args = {}
if pooled then
  charge('pool', PP.limits, pool_args)
end
-- This feature's cost and held amount changed: so did its part of each share sum.
if P.nf > 0 then
  if recompute then
    args[#args + 1] = 'rv'
    args[#args + 1] = P.ver
  end
  for _, L in ipairs(limits) do
    if L.is > 0 then
      if ppm then
        L.fused = L.fused + cost
        args[#args + 1] = L.fgf
        args[#args + 1] = fmt(L.fused)
        local term = shares_term(L.limit, ppm, L.fused, held_f)
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
if not v[6] then
  args[#args + 1] = 'sv'
  args[#args + 1] = '2'
end

-- Writes: the sliding buckets, the usage ledger and the daily counters, the state, the record.
for _, list in ipairs({ limits, pooled and PP.limits or {} }) do
  for _, L in ipairs(list) do
    if not L.cal then
      sl_add(L, cost_s, cost, 0)
      if L.alert_changed then
        sl_mark(L, 'A', L.alert)
      end
    end
  end
end
if status == 'h' then
  redis.call('ZREM', holds, tenant .. '/' .. id)
end
local late_flag = late == 'late' and '1' or '0'
day_add(tb, now, cost, 1, 0, 0, tonumber(ARGV[6]), tonumber(ARGV[7]), day_limit(limits),
  v[2] or DEFAULT_PLAN, USAGE_DAYS)
if LEDGER_MAXLEN ~= '0' then
  local ledger = tag .. 'l'
  local entry = { 't', tenant, 'id', id, 'f', feature, 'm', ARGV[12], 'u', ARGV[13],
    'i', ARGV[6], 'o', ARGV[7], 'c', cost_s, 'ts', fmt(now), 'q', ARGV[14], 'l', late_flag }
  local entry_id
  if LEDGER_MAXLEN ~= '' then
    entry_id = redis.call('XADD', ledger, 'MAXLEN', '~', LEDGER_MAXLEN, '*', unpack(entry))
  else
    entry_id = redis.call('XADD', ledger, '*', unpack(entry))
  end
  if LEDGER_RETENTION ~= '' then
    -- Entry ids are the server's time in ms. At most once a minute per tenant (field 'lt' of
    -- its state: the minute it last did), trim the entries older than the retention and push
    -- the stream's expiry to a minute past the retention, so an idle stream goes away.
    local server_ms = tonumber(string.match(entry_id, '^(%d+)'))
    local minute = fmt(math.floor(server_ms / 60000))
    if minute ~= v[10] then
      redis.call('XTRIM', ledger, 'MINID', '~',
        fmt(math.max(0, server_ms - tonumber(LEDGER_RETENTION))))
      redis.call('PEXPIRE', ledger, fmt(tonumber(LEDGER_RETENTION) + 60000))
      args[#args + 1] = 'lt'
      args[#args + 1] = minute
    end
  end
end
redis.call('HSET', state, unpack(args))
if pooled then
  if status == 'h' then
    pool_args[#pool_args + 1] = 'held'
    pool_args[#pool_args + 1] = fmt(pool_held)
  end
  if #pool_args > 0 then
    pool_args[#pool_args + 1] = 'sv'
    pool_args[#pool_args + 1] = '2'
    redis.call('HSET', pool_state, unpack(pool_args))
  end
end
local record_args = { 's', 'c', 'c', cost_s, 'l', late, 'in', ARGV[6], 'out', ARGV[7] }
if not status then
  record_args[#record_args + 1] = 'a'
  record_args[#record_args + 1] = '0'
  record_args[#record_args + 1] = 'f'
  record_args[#record_args + 1] = feature
end
if #alerts > 0 then
  record_args[#record_args + 1] = 'ca'
  record_args[#record_args + 1] = table.concat(alerts, ';')
end
redis.call('HSET', record, unpack(record_args))
redis.call('EXPIRE', record, RECORD_TTL)

local reply = { 'committed', #alerts }
for _, a in ipairs(alerts) do
  reply[#reply + 1] = a
end
reply[#reply + 1] = cost_s
reply[#reply + 1] = late
reply[#reply + 1] = fmt(released)
return reply
