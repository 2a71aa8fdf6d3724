-- Shared helpers, prepended to every script at load time (tokenfence_asgi/scripts.py).
--
-- Money is integer nano-dollars. Lua numbers are doubles, exact for integers below 2^53
-- (~$9M); Python rejects amounts and limits that could get near it. Integers are formatted
-- with fmt() before they reach a Redis command or a reply: a bare Lua number may be sent as
-- '1e+08' (redis/redis#13113) or truncated in a reply.
--
-- Key layout. TAG is "<prefix>:{t.<tenant>}:" for a tenant on its own, or "<prefix>:{p.<pool>}:"
-- for every member of a pool, so one script always touches one cluster slot. TB is the tenant's
-- base inside its tag, TAG.."t.<tenant>:".
--   TB.."s"         hash: plan, kill switches, held, per-feature held, calendar counters, loc
--   TB.."w:"..W     hash: sliding window W: totals c (cost) and r (requests), oldest bucket o,
--                   alert marks, and one field per bucket: "<cost>,<requests>"
--   TB.."r:"..ID    hash: a reservation: a amount, s state, e expiry, i candidate, f feature,
--                   fl '1' when the feature's held counter was raised
--   TAG.."h"        zset: open holds of the tag, member "<tenant>/<id>", score lease expiry (ms)
--   TAG.."pool:s"   hash (pools only): the pool's plan, held and counters; TAG.."pool:w:"..W
--   TB.."d"         hash: daily usage, one field per UTC day (days since the epoch), value
--                   "cost,commits,refusals,releases,input tokens,output tokens,limit,plan"
--                   (limit: the effective '1d' cost limit in nanos, -1 none, '' unknown)
--   TAG.."l"        stream: the usage ledger of the tag, one entry per commit (see commit.lua)
-- Reservation states: h held, c committed, r released, x expired (lease ran out, reclaimed),
-- m moved (its tenant moved to another tag, field 'to'; a stub that forwards settlement).
-- Calendar counters of window W in a state hash: W..':p' period start (s), ':c' committed cost,
-- ':r' requests, ':q' cost of the preceding period (rollover; -1 when the scope had no counters
-- then: its first period, which carries nothing), ':a' / ':b' highest cost / request alert
-- threshold already reported this period; W..':f:'..F "<period start>:<cost>" per feature.

local MAX_COUNTER = 9007199254740991

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
  if arg ~= nil and arg ~= '' then
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

-- Calendar arithmetic on days since 1970-01-01 (H. Hinnant's civil-date algorithms).
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

local FIXED_WINDOWS = { ['1m'] = 60, ['1h'] = 3600, ['1d'] = 86400 }

-- The calendar period (UTC) holding second s: start and end in seconds.
-- '7d' is the ISO week (Monday 00:00 UTC); '1mo' the calendar month.
local function period(window, s)
  local size = FIXED_WINDOWS[window]
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
local THRESHOLDS = { 50, 80, 100 }

local function split_member(member)
  local slash = string.find(member, '/', 1, true)
  return string.sub(member, 1, slash - 1), string.sub(member, slash + 1)
end

-- Drop an open hold's amount from the held totals (tenant, its feature, the pool) and from the
-- tag's holds. `v` is the record's HMGET of 'a', 's', 'f', 'fl'.
local function drop_hold(tag, tb, tenant, id, v, pooled)
  local minus = fmt(-num(v[1]))
  local state = tb .. 's'
  redis.call('HINCRBY', state, 'held', minus)
  redis.call('HINCRBY', state, 'nh', '-1')
  if v[4] == '1' then
    redis.call('HINCRBY', state, 'hf:' .. v[3], minus)
  end
  if pooled then
    redis.call('HINCRBY', tag .. 'pool:s', 'held', minus)
  end
  redis.call('ZREM', tag .. 'h', tenant .. '/' .. id)
end

-- Reclaim at most `budget` holds of the tag whose lease expired by `now`; bounded work per call.
-- Their amounts leave the held totals; their records stay (state x) so a late commit is
-- recognised and charged once.
local function reclaim(tag, now, budget, done_ttl_s, pooled)
  local members = redis.call('ZRANGEBYSCORE', tag .. 'h', '-inf', fmt(now), 'LIMIT', '0',
    fmt(budget))
  for _, member in ipairs(members) do
    local tenant, id = split_member(member)
    local tb = tag .. 't.' .. tenant .. ':'
    local record = tb .. 'r:' .. id
    local v = redis.call('HMGET', record, 'a', 's', 'f', 'fl')
    if v[2] == 'h' then
      drop_hold(tag, tb, tenant, id, v, pooled)
      redis.call('HSET', record, 's', 'x')
      redis.call('EXPIRE', record, done_ttl_s)
    else
      redis.call('ZREM', tag .. 'h', member)
    end
  end
end

-- Where the tenant lives when it is not at this tag: nil when it is here. `meta_loc` and
-- `meta_pool` are its state's 'loc' and 'pool' fields; `assumed_pool` the caller's belief.
-- A reply telling the caller to retry when it assumed other plans than the store holds (the
-- tenant's `stored` plan or else `default`, and the pool's), or nil. Checked before any write.
local function plans_differ(stored, default, assumed, pool_state, assumed_pool_plan)
  local plan = stored or default
  if plan ~= assumed then
    return { 'plan', 0, plan }
  end
  if pool_state then
    local pool_plan = redis.call('HGET', pool_state, 'plan') or ''
    if pool_plan ~= assumed_pool_plan then
      return { 'pool_plan', 0, pool_plan }
    end
  end
  return nil
end

local function moved(meta_loc, meta_pool, assumed_pool)
  if meta_loc then
    return meta_loc
  end
  if assumed_pool ~= '' and meta_pool ~= assumed_pool then
    return '-'
  end
  return nil
end

-- Limit specs from ARGV at index i: a count, then per limit 5 values: window, kind ('c'
-- calendar | 's' sliding), max cost nanos or -1, max requests or -1, rollover cap nanos.
local function read_specs(i)
  local specs = {}
  for k = 1, tonumber(ARGV[i]) do
    local j = i + 5 * (k - 1)
    specs[k] = {
      window = ARGV[j + 1], kind = ARGV[j + 2], max_cost = tonumber(ARGV[j + 3]),
      max_requests = tonumber(ARGV[j + 4]), cap = tonumber(ARGV[j + 5]),
    }
  end
  return specs, i + 1 + 5 * #specs
end

-- Features from ARGV at index i: a count, then per feature: encoded name, weight in ppm.
local function read_features(i)
  local features = {}
  for k = 1, tonumber(ARGV[i]) do
    features[k] = { name = ARGV[i + 2 * k - 1], ppm = tonumber(ARGV[i + 2 * k]) }
  end
  return features, i + 1 + 2 * #features
end

-- floor(amount * ppm / 1e6) without leaving the doubles' exact integer range.
local function share(amount, ppm)
  local high = math.floor(amount / 1000000)
  return high * ppm + math.floor((amount - high * 1000000) * ppm / 1000000)
end

local function feature_cost(value, start)
  if not value then
    return 0
  end
  local p, c = string.match(value, '^(%d+):(%d+)$')
  if tonumber(p) == start then
    return tonumber(c)
  end
  return 0
end

-- Load the counters of every limit of one scope (a tenant or a pool) as of now_s.
-- state: the scope's state hash; wbase: prefix of its sliding hashes; features: listed
-- features (tenant scope) or nil. Sliding buckets that left the window are dropped here
-- (a compaction, not a decision). Each spec gains: used, requests, carried, limit (effective),
-- resets (s), alert marks, and per-feature used for calendar limits.
local function load_scope(state, wbase, specs, now_s, features)
  local fields = {}
  for _, s in ipairs(specs) do
    if s.kind == 'c' then
      local w = s.window
      for _, suffix in ipairs({ ':p', ':c', ':r', ':q', ':a', ':b' }) do
        fields[#fields + 1] = w .. suffix
      end
      if features then
        for _, f in ipairs(features) do
          fields[#fields + 1] = w .. ':f:' .. f.name
        end
      end
    end
  end
  local values = {}
  if #fields > 0 then
    values = redis.call('HMGET', state, unpack(fields))
  end
  local n = 0
  for _, s in ipairs(specs) do
    s.fused = {}
    if s.kind == 'c' then
      local v = {}
      local width = 6 + (features and #features or 0)
      for k = 1, width do
        v[k] = values[n + k]
      end
      n = n + width
      local start, finish = period(s.window, now_s)
      s.start, s.resets = start, finish
      local stored = num(v[1])
      if stored == start then
        s.used, s.requests, s.prev, s.alert, s.ralert = num(v[2]), num(v[3]), num(v[4]),
          num(v[5]), num(v[6])
      else
        s.used, s.requests, s.alert, s.ralert = 0, 0, 0, 0
        if stored == period(s.window, start - 1) then
          s.prev = num(v[2])
        elseif v[1] then
          s.prev = 0 -- counted before and idle through the preceding period: nothing spent
        else
          s.prev = -1 -- never counted: the preceding period was not the tenant's to leave unused
        end
      end
      if features then
        for k, f in ipairs(features) do
          s.fused[f.name] = feature_cost(v[6 + k], start)
        end
      end
    else
      local key = wbase .. 'w:' .. s.window
      local bucket = SIZES[s.window] / 60
      local idx = math.floor(now_s / bucket)
      local cutoff = idx - 59
      local v = redis.call('HMGET', key, 'c', 'r', 'o', 'a', 'b')
      local used, requests, oldest = num(v[1]), num(v[2]), v[3] and tonumber(v[3])
      if oldest and oldest < cutoff then
        if oldest + 59 < cutoff then
          redis.call('DEL', key) -- everything stored is older than the window
          used, requests, oldest, v[4], v[5] = 0, 0, nil, nil, nil
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
          oldest = cutoff
          redis.call('HSET', key, 'c', fmt(used), 'r', fmt(requests), 'o', fmt(cutoff))
        end
      end
      s.key, s.idx, s.used, s.requests, s.prev = key, idx, used, requests, 0
      s.oldest = oldest
      -- An alert mark "<threshold>@<bucket>" holds for one window length.
      s.alert, s.ralert = 0, 0
      for slot, mark in ipairs({ v[4], v[5] }) do
        if mark then
          local t, at = string.match(mark, '^(%d+)@(-?%d+)$')
          if at and tonumber(at) > idx - 60 then
            if slot == 1 then s.alert = tonumber(t) else s.ralert = tonumber(t) end
          end
        end
      end
      s.resets = (idx + 1) * bucket
    end
    s.carried = 0
    if s.max_cost >= 0 and s.kind == 'c' and s.cap > 0 and s.prev >= 0 then
      -- Rollover: the unused budget of the preceding period only, capped; it never compounds
      -- because prev is that period's own committed spend, not its effective limit. A first
      -- period (prev -1) carries nothing.
      s.carried = math.min(math.max(0, s.max_cost - s.prev), s.cap)
    end
    s.limit = s.max_cost + s.carried
  end
end

-- When a sliding limit frees budget again: the end of its oldest bucket holding spend.
local function sliding_resets(s)
  local bucket = SIZES[s.window] / 60
  if not s.oldest then
    return (s.idx + 1) * bucket
  end
  for k = s.oldest, s.idx do
    if redis.call('HEXISTS', s.key, fmt(k)) == 1 then
      return (k + 60) * bucket
    end
  end
  return (s.idx + 1) * bucket
end

-- Add cost and requests to the current bucket of a sliding limit whose totals (s.used,
-- s.requests) already include them.
local function sliding_add(s, cost, requests)
  local field = fmt(s.idx)
  local current = redis.call('HGET', s.key, field)
  local c, r = 0, 0
  if current then
    c, r = string.match(current, '^(%d+),(%d+)$')
    c, r = tonumber(c), tonumber(r)
  end
  local args = { 'c', fmt(s.used), 'r', fmt(s.requests),
    field, fmt(c + cost) .. ',' .. fmt(r + requests) }
  if not s.oldest then
    args[#args + 1] = 'o'
    args[#args + 1] = field
  end
  redis.call('HSET', s.key, unpack(args))
  redis.call('PEXPIRE', s.key, fmt(SIZES[s.window] * 1000 + 60000))
end

-- Thresholds newly crossed by `value` of `limit`, above the level already reported.
-- Appends "scope|window|metric|threshold|value|limit" strings to out; returns the new level.
local function crossed(out, scope, s, metric, value, limit, level)
  if limit <= 0 then
    return level
  end
  for _, t in ipairs(THRESHOLDS) do
    if t > level and value * 100 >= t * limit then
      out[#out + 1] = scope .. '|' .. s.window .. '|' .. metric .. '|' .. t .. '|' .. fmt(value)
        .. '|' .. fmt(limit)
      level = t
    end
  end
  return level
end

-- Field/value pairs that store a calendar limit's counters (period moves forward if needed).
local function calendar_fields(args, s)
  local w = s.window
  if s.used > MAX_COUNTER or s.requests > MAX_COUNTER then
    error('tokenfence: counter overflow in window ' .. w)
  end
  local pairs_ = { w .. ':p', fmt(s.start), w .. ':c', fmt(s.used), w .. ':r', fmt(s.requests),
    w .. ':q', fmt(s.prev), w .. ':a', fmt(s.alert), w .. ':b', fmt(s.ralert) }
  for _, x in ipairs(pairs_) do
    args[#args + 1] = x
  end
end

-- Store a raised alert level of a sliding limit ('a' cost, 'b' requests) with the bucket it
-- was raised in; it holds for one window length. Calendar levels are stored with the counters.
local function sliding_mark(s, field, level)
  redis.call('HSET', s.key, field, fmt(level) .. '@' .. fmt(s.idx))
  redis.call('PEXPIRE', s.key, fmt(SIZES[s.window] * 1000 + 60000))
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

-- The effective cost limit of a scope's '1d' window (after load_scope), '-1' when it has none.
local function day_limit(specs)
  for _, s in ipairs(specs) do
    if s.window == '1d' and s.max_cost >= 0 then
      return fmt(s.limit)
    end
  end
  return '-1'
end
