-- Shared helpers, prepended to every script at load time (tokenfence_asgi/scripts.py).
--
-- Money is integer nano-dollars. Lua numbers are doubles, exact for integers below 2^53
-- (~$9M); Python rejects amounts and limits that could get near it. Integers are formatted
-- with fmt() before they reach a Redis command or a reply: a bare Lua number may be sent as
-- '1e+08' (redis/redis#13113) or truncated in a reply.
--
-- Key layout under one hash tag (BASE = "<prefix>:{t.<tenant>}:"):
--   BASE.."s"          hash: plan, kill switches, held total, last time, per-window counters
--   BASE.."h"          zset: open hold ids scored by lease expiry (ms)
--   BASE.."r:"..id     hash: one reservation (a amount, s state, f feature, w windows, e expiry)
-- Reservation states: h held, c committed, r released, x expired (lease ran out, reclaimed).

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

-- A window's counters as of period `start`: committed cost, requests, and the cost committed
-- in the immediately preceding period (for rollover). Stale periods read as zero.
local function window_counters(state, window, start)
  local v = redis.call('HMGET', state, window .. ':p', window .. ':c', window .. ':r', window .. ':q')
  local stored = num(v[1])
  if stored == start then
    return num(v[2]), num(v[3]), num(v[4])
  end
  local prev_start = period(window, start - 1)
  if stored == prev_start then
    return 0, 0, num(v[2])
  end
  return 0, 0, 0
end

-- Write a window's counters for period `start` (moving the period forward when it changed).
local function put_window(state, window, start, cost, requests, prev_cost)
  if cost > MAX_COUNTER or requests > MAX_COUNTER then
    error('tokenfence: counter overflow in window ' .. window)
  end
  redis.call('HSET', state, window .. ':p', fmt(start), window .. ':c', fmt(cost),
    window .. ':r', fmt(requests), window .. ':q', fmt(prev_cost))
end

-- Reclaim at most `budget` holds whose lease expired by `now`; bounded work per call.
-- Their amounts leave the held total; their records stay (state x) so a late commit is
-- recognised and charged once.
local function reclaim(state, holds, base, now, budget, done_ttl_s)
  local ids = redis.call('ZRANGEBYSCORE', holds, '-inf', fmt(now), 'LIMIT', 0, budget)
  if #ids == 0 then
    return 0
  end
  local freed = 0
  for _, id in ipairs(ids) do
    local record = base .. 'r:' .. id
    local v = redis.call('HMGET', record, 'a', 's')
    if v[2] == 'h' then
      freed = freed + num(v[1])
      redis.call('HSET', record, 's', 'x')
      redis.call('EXPIRE', record, done_ttl_s)
    end
    redis.call('ZREM', holds, id)
  end
  if freed > 0 then
    local held = num(redis.call('HGET', state, 'held')) - freed
    if held < 0 then
      held = 0
    end
    redis.call('HSET', state, 'held', fmt(held))
  end
  return freed
end

-- Add `cost` to every window in the comma-separated list, as of time `now_s`.
local function charge(state, windows, now_s, cost)
  for window in string.gmatch(windows, '[^,]+') do
    local start = period(window, now_s)
    local c, r, q = window_counters(state, window, start)
    put_window(state, window, start, c + cost, r, q)
  end
end

-- The base key ("<prefix>:{tag}:") from the state key, which ends in "s".
local function base_of(state)
  return string.sub(state, 1, -2)
end
