-- Shared helpers. A script gets only the helpers it uses (and theirs), in this order, before
-- its own code (tokenfence_asgi/store/scripts.py): every top-level `local` here is created
-- again on each call, so a script carries none it does not need.
--
-- Money is integer nano-dollars. Lua numbers are doubles, exact for integers below 2^53
-- (~$9M); Python rejects amounts and limits that could get near it. Integers are formatted
-- with fmt() before they reach a Redis command or a reply: a bare Lua number may be sent as
-- '1e+08' (redis/redis#13113) or truncated in a reply.
--
-- Key layout. TAG is "<prefix>:{t.<tenant>}:" for a tenant on its own, or "<prefix>:{p.<pool>}:"
-- for every member of a pool, so one script always touches one cluster slot. TB is the tenant's
-- base inside its tag, TAG.."t.<tenant>:".
--   TB.."s"         hash: the tenant's state (fields below)
--   TB.."w:"..W     hash: sliding window W (fields below)
--   TB.."r:"..ID    hash: a reservation: a amount, s state, e expiry, i candidate, f feature,
--                   fl '1' when the feature's held counter was raised
--   TAG.."h"        zset: open holds of the tag, member "<tenant>/<id>", score lease expiry (ms)
--   TAG.."pool:s"   hash (pools only): the pool's plan, held and calendar counters;
--                   TAG.."pool:w:"..W its sliding windows
--   TB.."d"         hash: daily usage, one field per UTC day (days since the epoch), value
--                   "cost,commits,refusals,releases,input tokens,output tokens,limit,plan"
--                   (limit: the effective '1d' cost limit in nanos, -1 none, '' unknown)
--   TAG.."l"        stream: the usage ledger of the tag, one entry per commit (see commit.lua)
-- Reservation states: h held, c committed, r released, x expired (lease ran out, reclaimed),
-- m moved (its tenant moved to another tag, field 'to'; a stub that forwards settlement).
--
-- State fields: t last time seen (ms), plan, k / 'k:'..F kill switches, held and nh (amount and
-- number of open holds), 'hf:'..F held for feature F, loc / pool / mv* (moves, see move.lua),
-- lt (ledger trim minute), sv '2' once the state is in this layout (older ones are converted
-- on first use, see migrate), rv the plan version the feature share sums are for ('' when
-- they must be recomputed). Running totals of calendar window W: W..':p' period start (s),
-- ':e' period end (s), ':c' committed cost, ':r' requests, ':q' cost of the preceding period
-- (rollover; -1 when the scope had no counters then: its first period, which carries nothing),
-- ':a' / ':b' highest cost / request alert threshold reported this period, ':s' the unused
-- guarantees of the plan's features (see shares_term), W..':g:'..F feature F's cost this
-- period. Date maths runs only when a period ends.
-- Sliding window fields: c, r totals; o oldest bucket kept; ci the current bucket and cc / cr
-- its cost and requests; one field per earlier bucket, "<cost>,<requests>"; A / B cost /
-- request alert marks, level * 1e12 + the bucket it was raised in (it holds for one window).

local MAX_COUNTER = 9007199254740991
local MARK = 1000000000000

local function fmt(n)
  return string.format('%d', n)
end

local function num(v)
  if not v then
    return 0
  end
  return tonumber(v) or 0
end

-- Script time in ms: ARGV time when the caller injects a clock, else the server's TIME.
-- Never behind the last time this tenant's state saw (a failover may change the clock source).
local function clock_ms(arg, last)
  local now
  if arg ~= '' then
    now = tonumber(arg)
  else
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  last = num(last)
  if last > now then
    return last
  end
  return now
end

-- The calendar period (UTC) holding second s: start and end in seconds.
-- '7d' is the ISO week (Monday 00:00 UTC); '1mo' the calendar month.
local function period(window, s)
  local size = ({ ['1m'] = 60, ['1h'] = 3600, ['1d'] = 86400 })[window]
  -- Calendar arithmetic on days since 1970-01-01 (H. Hinnant's civil-date algorithms); made
  -- only here, where a period ends.
  local function days_from_civil(y, m, d)
    if m <= 2 then
      y = y - 1
    end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = math.floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
  end

  local function civil_from_days(z)
    z = z + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
      - math.floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local d = doy - math.floor((153 * mp + 2) / 5) + 1
    local m
    if mp < 10 then
      m = mp + 3
    else
      m = mp - 9
    end
    if m <= 2 then
      y = y + 1
    end
    return y, m, d
  end

  if size then
    local start = math.floor(s / size) * size
    return start, start + size
  end
  local days = math.floor(s / 86400)
  if window == '7d' then
    local monday = days - (days + 3) % 7
    return monday * 86400, (monday + 7) * 86400
  end
  if window == '1mo' then
    local y, m = civil_from_days(days)
    local start = days_from_civil(y, m, 1)
    if m == 12 then
      y, m = y + 1, 1
    else
      m = m + 1
    end
    return start * 86400, days_from_civil(y, m, 1) * 86400
  end
  error('tokenfence: unknown window ' .. tostring(window))
end

local SIZES = { ['1m'] = 60, ['1h'] = 3600, ['1d'] = 86400, ['7d'] = 604800, ['1mo'] = 2678400 }

-- A limit as the scripts use it (the compiled plans build the same tables with constant
-- names): window w, calendar or not, max cost m and max requests n (-1: none), rollover cap,
-- and the names of its counters. A calendar limit's counters are read as a block: end, cost,
-- requests, then at iq / ia / ib (1-based in the block, 0 when not read) the preceding cost,
-- the cost and the request alert levels (a compiled plan reads only those it needs).
local function limit_of(window, kind, m, n, cap)
  if kind == 'c' then
    return { w = window, cal = true, m = m, n = n, cap = cap, fp = window .. ':p',
      fe = window .. ':e', fc = window .. ':c', fr = window .. ':r', fq = window .. ':q',
      fa = window .. ':a', fb = window .. ':b', fs = window .. ':s', fg = window .. ':g:',
      iq = 4, ia = 5, ib = 6, is = 0 }
  end
  return { w = window, cal = false, m = m, n = n, cap = 0, wkey = 'w:' .. window,
    bucket = SIZES[window] / 60, ttl = fmt(SIZES[window] * 1000 + 60000), is = 0 }
end

-- Limit specs from ARGV at index i: a count, then per limit 5 values: window, kind ('c'
-- calendar | 's' sliding), max cost nanos or -1, max requests or -1, rollover cap nanos.
local function read_specs(i)
  local specs = {}
  for k = 1, tonumber(ARGV[i]) do
    local j = i + 5 * (k - 1)
    specs[k] = limit_of(ARGV[j + 1], ARGV[j + 2], tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4]),
      tonumber(ARGV[j + 5]))
  end
  return specs, i + 1 + 5 * #specs
end

-- Features from ARGV at index i: a count, then per feature: encoded name, weight in ppm.
local function read_features(i)
  local features = {}
  for k = 1, tonumber(ARGV[i]) do
    features[k] = { ARGV[i + 2 * k - 1], tonumber(ARGV[i + 2 * k]) }
  end
  return features, i + 1 + 2 * #features
end

-- Drop an open hold's amount from the held totals (tenant, its feature, the pool) and from the
-- tag's holds. `v` is the record's HMGET of 'a', 's', 'f', 'fl'. The feature's share sums are
-- recomputed by the tenant's next reserve or commit ('rv' cleared).
local function drop_hold(tag, tb, tenant, id, v, pooled)
  local minus = fmt(-num(v[1]))
  local state = tb .. 's'
  redis.call('HINCRBY', state, 'held', minus)
  redis.call('HINCRBY', state, 'nh', '-1')
  if v[4] == '1' then
    redis.call('HINCRBY', state, 'hf:' .. v[3], minus)
    redis.call('HSET', state, 'rv', '')
  end
  if pooled then
    redis.call('HINCRBY', tag .. 'pool:s', 'held', minus)
  end
  redis.call('ZREM', tag .. 'h', tenant .. '/' .. id)
end

-- Reclaim at most `budget` holds of the tag whose lease expired by `now`; bounded work per call.
-- Their amounts leave the held totals; their records stay (state x) so a late commit is
-- recognised and charged once. True when a held total the caller read may have changed
-- (tenant `me`'s, or the pool's).
local function reclaim(tag, now, budget, done_ttl_s, pooled, me)
  local members = redis.call('ZRANGEBYSCORE', tag .. 'h', '-inf', fmt(now), 'LIMIT', '0', budget)
  local touched = false
  for _, member in ipairs(members) do
    local slash = string.find(member, '/', 1, true)
    local tenant, id = string.sub(member, 1, slash - 1), string.sub(member, slash + 1)
    local tb = tag .. 't.' .. tenant .. ':'
    local record = tb .. 'r:' .. id
    local v = redis.call('HMGET', record, 'a', 's', 'f', 'fl')
    if v[2] == 'h' then
      drop_hold(tag, tb, tenant, id, v, pooled)
      redis.call('HSET', record, 's', 'x')
      redis.call('EXPIRE', record, done_ttl_s)
      touched = touched or pooled or tenant == me
    else
      redis.call('ZREM', tag .. 'h', member)
    end
  end
  return touched
end

-- Where the tenant lives when it is not at this tag: nil when it is here. `meta_loc` and
-- `meta_pool` are its state's 'loc' and 'pool' fields; `assumed_pool` the caller's belief.
local function moved(meta_loc, meta_pool, assumed_pool)
  if meta_loc then
    return meta_loc
  end
  if assumed_pool ~= '' and meta_pool ~= assumed_pool then
    return '-'
  end
  return nil
end

-- A reply telling the caller to retry when it assumed other plans than the store holds (the
-- tenant's `stored` plan or else `default`, and the pool's `pool_plan`), or nil.
local function plans_differ(stored, default, assumed, pooled, pool_plan, assumed_pool_plan)
  local plan = stored or default
  if plan ~= assumed then
    return { 'plan', 0, plan }
  end
  if pooled and (pool_plan or '') ~= assumed_pool_plan then
    return { 'pool_plan', 0, pool_plan or '' }
  end
  return nil
end

-- floor(amount * ppm / 1e6) without leaving the doubles' exact integer range.
local function share(amount, ppm)
  local high = math.floor(amount / 1000000)
  return high * ppm + math.floor((amount - high * 1000000) * ppm / 1000000)
end

-- A feature's part of a window's share sum: its guarantee not yet used nor held.
local function shares_term(limit, ppm, used, held)
  local free = share(limit, ppm) - used - held
  if free > 0 then
    return free
  end
  return 0
end

-- Convert a state written by the previous layout (no 'sv'), once: feature costs stored as
-- "<period start>:<cost>" become plain W..':g:'..F fields (kept when of the window's stored
-- period, else dropped), and the sliding alert marks "<level>@<bucket>" become A / B. The
-- period ends (':e') and share sums are filled in by the next load, which finds them missing.
-- Bounded: one pass over the state's fields and its five sliding hashes.
local function migrate(state, wbase)
  local flat = redis.call('HGETALL', state)
  local fields = {}
  for k = 1, #flat, 2 do
    fields[flat[k]] = flat[k + 1]
  end
  local put, gone = {}, {}
  for field, value in pairs(fields) do
    local window, feature = string.match(field, '^([^:]+):f:(.+)$')
    if window and fields[window .. ':p'] then
      gone[#gone + 1] = field
      local p, c = string.match(value, '^(%d+):(%d+)$')
      if p and p == fields[window .. ':p'] then
        put[#put + 1] = window .. ':g:' .. feature
        put[#put + 1] = c
      end
    end
  end
  put[#put + 1] = 'sv'
  put[#put + 1] = '2'
  if #gone > 0 then
    redis.call('HDEL', state, unpack(gone))
  end
  redis.call('HSET', state, unpack(put))
  for _, window in ipairs({ '1m', '1h', '1d', '7d', '1mo' }) do
    local key = wbase .. 'w:' .. window
    local marks = redis.call('HMGET', key, 'a', 'b')
    for slot, mark in ipairs(marks) do
      if mark then
        local t, at = string.match(mark, '^(%d+)@(-?%d+)$')
        local field = slot == 1 and 'A' or 'B'
        if t then
          redis.call('HSET', key, field, fmt(tonumber(t) * MARK + tonumber(at)))
        end
        redis.call('HDEL', key, slot == 1 and 'a' or 'b')
      end
    end
  end
end

-- Counters of calendar limit L as of now_s, from its block of values at v[at + 1...] (see
-- limit_of): stored end e, cost c, requests r, preceding cost q and alert levels a, b (a value
-- not read counts 0; it matters only to a limit that reads it). Within the stored period
-- nothing is computed; when
-- it has ended (or was never stored) the period's start ':p' tells whether the counters are
-- this period's after all (stored without an end), the preceding period's (carried over) or
-- older. L.rolled: true when the counters start again (all to be stored), 'end' when only the
-- end is new. Sets used, requests, prev, alert, ralert, resets (s), limit, carried.
local function cal_load(L, state, now_s, v, at)
  local e, c, r = tonumber(v[at + 1]), v[at + 2], v[at + 3]
  local q = L.iq > 0 and v[at + L.iq]
  local a = L.ia > 0 and v[at + L.ia]
  local b = L.ib > 0 and v[at + L.ib]
  if e and now_s < e then
    L.used, L.requests, L.prev, L.alert, L.ralert = num(c), num(r), num(q), num(a), num(b)
    L.resets, L.rolled = e, false
  else
    local start, finish = period(L.w, now_s)
    L.start, L.resets = start, finish
    local p = tonumber(redis.call('HGET', state, L.fp))
    if p == start then
      L.used, L.requests, L.prev, L.alert, L.ralert = num(c), num(r), num(q), num(a), num(b)
      L.rolled = 'end'
    else
      L.used, L.requests, L.alert, L.ralert, L.rolled = 0, 0, 0, 0, true
      if e == start or (p and p == period(L.w, start - 1)) then
        L.prev = num(c)
      elseif e or p then
        L.prev = 0 -- counted before and idle through the preceding period: nothing spent
      else
        L.prev = -1 -- never counted: the preceding period was not the scope's to leave unused
      end
    end
  end
  -- Rollover: the unused budget of the preceding period only, capped; it never compounds
  -- because prev is that period's own committed spend, not its effective limit.
  L.carried = 0
  if L.m >= 0 and L.cap > 0 and L.prev >= 0 then
    L.carried = math.min(math.max(0, L.m - L.prev), L.cap)
  end
  L.limit = L.m + L.carried
end

-- Field/value pairs to store after a calendar load: everything when the period started again,
-- its end when only that is new. The caller adds the counters it changed.
local function cal_rolled(args, L)
  if L.rolled == true then
    for _, x in ipairs({ L.fp, fmt(L.start), L.fe, fmt(L.resets), L.fc, fmt(L.used), L.fr,
      fmt(L.requests), L.fq, fmt(L.prev), L.fa, fmt(L.alert), L.fb, fmt(L.ralert) }) do
      args[#args + 1] = x
    end
  elseif L.rolled == 'end' then
    args[#args + 1] = L.fe
    args[#args + 1] = fmt(L.resets)
  end
end

-- A new period of window L: its feature costs start again. Every W..':g:' field goes, also of
-- features no longer listed, so one listed again later starts from zero. Once per period.
local function cal_clear_features(state, L)
  local gone = {}
  local prefix = L.fg
  for _, field in ipairs(redis.call('HKEYS', state)) do
    if string.sub(field, 1, #prefix) == prefix then
      gone[#gone + 1] = field
    end
  end
  if #gone > 0 then
    redis.call('HDEL', state, unpack(gone))
  end
end

-- The share sums of every calendar cost limit in `limits`, from scratch: for each listed
-- feature (name, ppm), its guarantee not used this period (0 for a limit that rolled over)
-- nor held. Sets L.shares and, for feature `mine`, L.term and L.fused. One read of 2 fields
-- per feature and limit; run when the plan version or a period changed.
local function shares_recompute(state, limits, features, mine)
  local fields = {}
  for _, f in ipairs(features) do
    fields[#fields + 1] = 'hf:' .. f[1]
    for _, L in ipairs(limits) do
      if L.cal and L.m >= 0 then
        fields[#fields + 1] = L.fg .. f[1]
      end
    end
  end
  local v = {}
  if #fields > 0 then
    v = redis.call('HMGET', state, unpack(fields))
  end
  for _, L in ipairs(limits) do
    L.shares = 0
  end
  local n = 0
  for _, f in ipairs(features) do
    n = n + 1
    local held = num(v[n])
    for _, L in ipairs(limits) do
      if L.cal and L.m >= 0 then
        n = n + 1
        local used = 0
        if L.rolled ~= true then
          used = num(v[n])
        end
        local term = shares_term(L.limit, f[2], used, held)
        L.shares = L.shares + term
        if f[1] == mine then
          L.term, L.fused = term, used
        end
      end
    end
  end
end

-- Load a sliding limit L (its hash `key`) as of now_s: totals, the current bucket and alert
-- marks. Buckets that left the window are dropped here (a compaction, not a decision); when
-- the current bucket is an older one it joins the stored buckets. Sets used, requests, idx,
-- resets, alert, ralert.
local function sl_load(L, key, now_s)
  local idx = math.floor(now_s / L.bucket)
  local cutoff = idx - 59
  local v = redis.call('HMGET', key, 'c', 'r', 'o', 'ci', 'A', 'B')
  local used, requests, oldest, ci = num(v[1]), num(v[2]), tonumber(v[3]), tonumber(v[4])
  local cost_mark, request_mark = tonumber(v[5]), tonumber(v[6])
  if oldest and oldest < cutoff then
    if oldest + 59 < cutoff then
      redis.call('DEL', key) -- everything stored is older than the window
      used, requests, oldest, ci, cost_mark, request_mark = 0, 0, nil, nil, nil, nil
    else
      local old = {}
      for k = oldest, cutoff - 1 do
        old[#old + 1] = fmt(k)
      end
      local dropped = redis.call('HMGET', key, unpack(old))
      for _, d in ipairs(dropped) do
        if d then
          local c, r = string.match(d, '^(%d+),(%d+)$')
          used, requests = used - tonumber(c), requests - tonumber(r)
        end
      end
      redis.call('HDEL', key, unpack(old))
      if ci and ci < cutoff then
        local current = redis.call('HMGET', key, 'cc', 'cr')
        used, requests, ci = used - num(current[1]), requests - num(current[2]), nil
        redis.call('HDEL', key, 'ci', 'cc', 'cr')
      end
      oldest = cutoff
      redis.call('HSET', key, 'c', fmt(used), 'r', fmt(requests), 'o', fmt(cutoff))
    end
  end
  L.key, L.idx, L.used, L.requests, L.oldest, L.ci = key, idx, used, requests, oldest, ci
  L.alert, L.ralert, L.prev, L.carried = 0, 0, 0, 0
  if cost_mark and cost_mark % MARK > idx - 60 then
    L.alert = math.floor(cost_mark / MARK)
  end
  if request_mark and request_mark % MARK > idx - 60 then
    L.ralert = math.floor(request_mark / MARK)
  end
  L.resets = (idx + 1) * L.bucket
  L.limit = L.m
end

-- Load the counters of every limit of the tenant's plan P (state fields v, as read; calendar
-- blocks from v[10 + L.o]): calendar periods rolled over when they ended, sliding windows
-- compacted, and the feature share sums of the calendar cost limits, this feature's part from
-- its fields (ppm, held_f) or every sum from scratch (features_of: the plan's listed features)
-- when the plan version or a period changed. Returns whether the sums were recomputed.
local function limits_load(P, state, tb, v, now_s, ppm, feature, held_f, features_of)
  local limits = P.limits
  local recompute = P.nf > 0 and v[9] ~= P.ver
  for _, L in ipairs(limits) do
    if L.cal then
      cal_load(L, state, now_s, v, 10 + L.o)
      if L.is > 0 then
        if L.rolled == true then
          recompute = true
        end
        L.shares = num(v[L.is])
        L.fused = ppm and num(v[L.ig]) or 0
        L.term = ppm and shares_term(L.limit, ppm, L.fused, held_f) or 0
      end
    else
      sl_load(L, tb .. L.wkey, now_s)
    end
  end
  for _, L in ipairs(limits) do
    if L.rolled == true then
      cal_clear_features(state, L) -- housekeeping: the past period's feature costs
    end
  end
  if recompute then
    shares_recompute(state, limits, features_of(P.name), ppm and feature)
  end
  return recompute
end

-- Load the counters of every limit of the pool's plan PP (pool state fields pv, as read;
-- calendar blocks from pv[3 + L.o]; sliding windows under `prefix`). Returns the pool's held
-- total.
local function pool_limits_load(PP, pool_state, pv, prefix, now_s)
  for _, L in ipairs(PP.limits) do
    if L.cal then
      cal_load(L, pool_state, now_s, pv, L.o + 3)
    else
      sl_load(L, prefix .. L.wkey, now_s)
    end
  end
  return num(pv[2])
end

-- Add cost (a string of digits and its value) and requests to sliding limit L, whose totals
-- (L.used, L.requests) already include them. Within the current bucket two increments; when
-- a new bucket starts, the previous current one is stored as a bucket field.
local function sl_add(L, cost_s, cost, requests)
  local key = L.key
  if L.ci == L.idx then
    if cost > 0 then
      redis.call('HINCRBY', key, 'c', cost_s)
      redis.call('HINCRBY', key, 'cc', cost_s)
    end
    if requests > 0 then
      redis.call('HINCRBY', key, 'r', '1')
      redis.call('HINCRBY', key, 'cr', '1')
    end
    return
  end
  local args = { 'c', fmt(L.used), 'r', fmt(L.requests), 'ci', fmt(L.idx), 'cc', cost_s,
    'cr', fmt(requests) }
  if L.ci then
    local field = fmt(L.ci)
    local current = redis.call('HMGET', key, 'cc', 'cr', field) -- and one the previous layout
    local c, r = num(current[1]), num(current[2])
    local stored = current[3]
    if stored then
      local sc, sr = string.match(stored, '^(%d+),(%d+)$')
      c, r = c + tonumber(sc), r + tonumber(sr)
    end
    args[#args + 1] = field
    args[#args + 1] = fmt(c) .. ',' .. fmt(r)
  end
  if not L.oldest then
    args[#args + 1] = 'o'
    args[#args + 1] = fmt(L.idx)
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, L.ttl)
  L.ci = L.idx
end

-- When a sliding limit frees budget again: the end of its oldest bucket holding spend.
local function sl_resets(L)
  if L.oldest then
    for k = L.oldest, L.idx do
      if k == L.ci or redis.call('HEXISTS', L.key, fmt(k)) == 1 then
        return (k + 60) * L.bucket
      end
    end
  end
  return (L.idx + 1) * L.bucket
end

-- Store a raised alert level of a sliding limit ('A' cost, 'B' requests) with the bucket it
-- was raised in; it holds for one window length. Calendar levels are stored with the counters.
local function sl_mark(L, field, level)
  redis.call('HSET', L.key, field, fmt(level * MARK + L.idx))
  redis.call('PEXPIRE', L.key, L.ttl)
end

-- Thresholds newly crossed by `value` of `limit`, above the level already reported.
-- Appends "scope|window|metric|threshold|value|limit" strings to out; returns the new level.
local function crossed(out, scope, L, metric, value, limit, level)
  if limit <= 0 then
    return level
  end
  for _, t in ipairs({ 50, 80, 100 }) do
    if t > level and value * 100 >= t * limit then
      out[#out + 1] = scope .. '|' .. L.w .. '|' .. metric .. '|' .. t .. '|' .. fmt(value)
        .. '|' .. fmt(limit)
      level = t
    end
  end
  return level
end

-- Daily usage (TB.."d"): add to the counters of the UTC day holding now_ms. `limit` and `plan`
-- replace the stored ones unless ''. A day's field is created once per day; then the hash's
-- ttl is renewed to `keep_days` and fields older than that are dropped (bounded, once a day).
local function day_add(tb, now_ms, cost, commits, refusals, releases, tin, tout, limit, plan,
                       keep_days)
  local key = tb .. 'd'
  local day = math.floor(now_ms / 86400000)
  local field = fmt(day)
  local cur = redis.call('HGET', key, field)
  local c, n, x, r, i, o, l, p = 0, 0, 0, 0, 0, 0, '', ''
  if cur then
    local a, b, d, e, f, g
    a, b, d, e, f, g, l, p = string.match(cur,
      '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(-?%d*),(.*)$')
    c, n, x, r, i, o = tonumber(a), tonumber(b), tonumber(d), tonumber(e), tonumber(f),
      tonumber(g)
  end
  if limit ~= '' then
    l = limit
  end
  if plan ~= '' then
    p = plan
  end
  redis.call('HSET', key, field, fmt(c + cost) .. ',' .. fmt(n + commits) .. ',' .. fmt(x + refusals)
    .. ',' .. fmt(r + releases) .. ',' .. fmt(i + tin) .. ',' .. fmt(o + tout) .. ',' .. l .. ','
    .. p)
  if not cur then
    redis.call('EXPIRE', key, fmt(keep_days * 86400))
    if redis.call('HLEN', key) > keep_days then
      local old = {}
      for _, f in ipairs(redis.call('HKEYS', key)) do
        if tonumber(f) <= day - keep_days then
          old[#old + 1] = f
        end
      end
      if #old > 0 then
        redis.call('HDEL', key, unpack(old))
      end
    end
  end
end

-- The effective cost limit of a scope's '1d' window (after loading), '-1' when it has none.
local function day_limit(limits)
  for _, L in ipairs(limits) do
    if L.w == '1d' and L.m >= 0 then
      return fmt(L.limit)
    end
  end
  return '-1'
end
