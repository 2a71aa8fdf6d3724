-- COMMIT: replace a hold with the actual cost. Idempotent: the first commit or release of an
-- id settles it; later ones change nothing. A commit after the lease ran out still charges the
-- actual cost (the money was spent) and is flagged late; so is one for an id the store no
-- longer knows (its record expired, or was lost in a failover before it replicated).
-- Crossing 50%, 80% or 100% of a cost limit is reported once per window per threshold; the
-- alerts a commit raised are kept in its record (field 'ca') and reported again by a repeat of
-- that commit, which a client sends when the first reply was lost.
--
-- KEYS[1] state: tenant state TB.."s"
-- KEYS[2] record: reservation record TB.."r:"..id
-- KEYS[3] holds: holds of the tag TAG.."h"
-- KEYS[4] pool_state?: pool state TAG.."pool:s" (pool members only)
-- ARGV[1] now_ms: integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2] tenant: tenant id (encoded)
-- ARGV[3] reservation: reservation id (encoded)
-- ARGV[4] cost: actual cost, integer nano-dollars
-- ARGV[5] record_ttl_s: record ttl after settling, integer seconds
-- ARGV[6] reclaim: most expired holds reclaimed by this call
-- ARGV[7] feature: feature (encoded) or '', used when the record is unknown
-- ARGV[8] input_tokens: input tokens
-- ARGV[9] output_tokens: output tokens
-- ARGV[10] pool: the pool the caller assumed (encoded) or ''
-- ARGV[11] follow_stubs: '1' to follow a forwarding stub of a moved hold, '0' not to
-- ARGV[12] plan: the tenant's plan the caller assumed
-- ARGV[13] default_plan: the plan of a tenant without one
-- ARGV[14] pool_plan: the pool's plan the caller assumed, or ''
-- ARGV[15] model: model requested or ''
-- ARGV[16] model_used: model used, '' when the same as requested
-- ARGV[17] request_id: request id or ''
-- ARGV[18] ledger_maxlen: ledger stream max length (approximate), '' unbounded, '0' no ledger
-- ARGV[19] ledger_retention_ms: entries older are trimmed (by server time), or '' to keep them
-- ARGV[20] usage_days: days of daily usage kept
-- ARGV[21] specs...: features (a count, then (name, weight ppm) pairs), then the tenant's and
--          the pool's limit specs (see read_specs)
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
local tag = string.sub(holds, 1, -2)
local tb = string.sub(state, 1, -2)
local pooled = pool_state ~= nil

-- A settled id stays settled, even after the tenant moved to another pool.
local v = redis.call('HMGET', record, 'a', 's', 'f', 'fl', 'c', 'to', 'ca')
if v[2] == 'c' or v[2] == 'r' then
  local reply = { 'duplicate', 0 }
  if v[7] then
    for a in string.gmatch(v[7], '[^;]+') do
      reply[#reply + 1] = a
    end
    reply[2] = #reply - 2
  end
  reply[#reply + 1] = v[2]
  reply[#reply + 1] = v[5] or '0'
  return reply
end
-- A stub forwards to where the hold moved with its tenant; it is not followed when the caller
-- came here following the tenant itself (the hold then ran out elsewhere, see below).
if v[2] == 'm' and ARGV[11] == '1' then
  return { 'moved', 0, v[6], 'record' }
end
local meta = redis.call('HMGET', state, 't', 'loc', 'pool', 'plan', 'lt')
local elsewhere = moved(meta[2], meta[3], ARGV[10])
if elsewhere then
  if v[2] == 'x' or not v[2] then
    -- The cost will be charged where the tenant lives now: leave a stub pointing there, so
    -- a repeat of this commit finds that charge even after the tenant comes back here.
    redis.call('DEL', record)
    redis.call('HSET', record, 's', 'm', 'to', elsewhere)
    redis.call('EXPIRE', record, ARGV[5])
  end
  return { 'moved', 0, elsewhere, 'tenant' }
end
-- The caller prices against the plans the store holds, or retries (nothing written yet).
local retry = plans_differ(meta[4], ARGV[13], ARGV[12], pool_state, ARGV[14])
if retry then
  return retry
end
local now = clock_ms(ARGV[1], meta[1])
local now_s = math.floor(now / 1000)
local cost = tonumber(ARGV[4])
local done_ttl = ARGV[5]

reclaim(tag, now, tonumber(ARGV[6]), done_ttl, pooled)
v = redis.call('HMGET', record, 'a', 's', 'f', 'fl', 'c')
local status, released, late = v[2], 0, 'late'
if status == 'm' then
  status = nil -- a stale stub: the hold it forwarded to ran out; charge the cost here
  redis.call('DEL', record)
end
local feature = v[3] or ARGV[7]
if status == 'h' then
  released = num(v[1])
  drop_hold(tag, tb, ARGV[2], ARGV[3], v, pooled)
  late = 'on_time'
elseif not status then
  redis.call('HSET', record, 'a', '0', 'f', feature)
end

local features, i = read_features(21)
local specs, pool_specs
specs, i = read_specs(i)
pool_specs = read_specs(i)
local listed = false
for _, f in ipairs(features) do
  if f.name == feature then
    listed = true
  end
end

local alerts = {}
local function charge(scope, scope_state, list, wbase, with_features)
  load_scope(scope_state, wbase, list, now_s, with_features and #features > 0 and features or nil)
  local args = {}
  for _, s in ipairs(list) do
    s.used = s.used + cost
    if s.max_cost >= 0 then
      local level = crossed(alerts, scope, s, 'cost', s.used, s.limit, s.alert)
      if level ~= s.alert then
        s.alert = level
        if s.kind == 's' then
          sliding_mark(s, 'a', level)
        end
      end
    end
    if s.kind == 'c' then
      calendar_fields(args, s)
      if with_features and listed then
        args[#args + 1] = s.window .. ':f:' .. feature
        args[#args + 1] = fmt(s.start) .. ':' .. fmt(s.fused[feature] + cost)
      end
    else
      sliding_add(s, cost, 0)
    end
  end
  return args
end

local args = charge('tenant', state, specs, tb, true)
args[#args + 1] = 't'
args[#args + 1] = fmt(now)

-- The usage ledger and the daily counters, atomically with the charge.
local late_flag = late == 'late' and '1' or '0'
day_add(tb, now, cost, 1, 0, 0, tonumber(ARGV[8]), tonumber(ARGV[9]), day_limit(specs),
  meta[4] or ARGV[13], tonumber(ARGV[20]))
if ARGV[18] ~= '0' then
  local ledger = tag .. 'l'
  local entry = { 't', ARGV[2], 'id', ARGV[3], 'f', feature, 'm', ARGV[15], 'u', ARGV[16],
    'i', ARGV[8], 'o', ARGV[9], 'c', fmt(cost), 'ts', fmt(now), 'q', ARGV[17], 'l', late_flag }
  local entry_id
  if ARGV[18] ~= '' then
    entry_id = redis.call('XADD', ledger, 'MAXLEN', '~', ARGV[18], '*', unpack(entry))
  else
    entry_id = redis.call('XADD', ledger, '*', unpack(entry))
  end
  if ARGV[19] ~= '' then
    -- Entry ids are the server's time in ms. At most once a minute per tenant (field 'lt' of
    -- its state: the minute it last did), trim the entries older than the retention and push
    -- the stream's expiry to a minute past the retention, so an idle stream goes away.
    local server_ms = tonumber(string.match(entry_id, '^(%d+)'))
    local minute = fmt(math.floor(server_ms / 60000))
    if minute ~= meta[5] then
      redis.call('XTRIM', ledger, 'MINID', '~',
        fmt(math.max(0, server_ms - tonumber(ARGV[19]))))
      redis.call('PEXPIRE', ledger, fmt(tonumber(ARGV[19]) + 60000))
      args[#args + 1] = 'lt'
      args[#args + 1] = minute
    end
  end
end
redis.call('HSET', state, unpack(args))
if pooled then
  local pool_args = charge('pool', pool_state, pool_specs, tag .. 'pool:', false)
  if #pool_args > 0 then
    redis.call('HSET', pool_state, unpack(pool_args))
  end
end
if #alerts > 0 then
  redis.call('HSET', record, 's', 'c', 'c', fmt(cost), 'l', late, 'in', ARGV[8], 'out', ARGV[9],
    'ca', table.concat(alerts, ';'))
else
  redis.call('HSET', record, 's', 'c', 'c', fmt(cost), 'l', late, 'in', ARGV[8], 'out', ARGV[9])
end
redis.call('EXPIRE', record, done_ttl)

local reply = { 'committed', #alerts }
for _, a in ipairs(alerts) do
  reply[#reply + 1] = a
end
reply[#reply + 1] = fmt(cost)
reply[#reply + 1] = late
reply[#reply + 1] = fmt(released)
return reply
