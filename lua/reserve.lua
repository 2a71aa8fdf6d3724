-- RESERVE: check every limit of the tenant's plan and hold the first candidate that fits.
-- Decides first, then writes: a refused call changes nothing but the reclaim of expired holds.
--
-- KEYS[1]: tenant state hash          KEYS[2]: holds zset          KEYS[3]: reservation record
-- ARGV[1]: now, integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2]: plan name the caller assumed (its limits follow)
-- ARGV[3]: default plan name, effective when the tenant has none stored
-- ARGV[4]: reservation id (encoded, as in KEYS[3])
-- ARGV[5]: feature (encoded) or ''
-- ARGV[6]: hold lease, integer ms
-- ARGV[7]: reclaim budget, max expired holds reclaimed by this call
-- ARGV[8]: record ttl after a terminal state, integer seconds
-- ARGV[9]: number of limits L; then L groups of 4:
--            window code, max cost nanos or '-1', max requests or '-1', rollover cap nanos
-- then:    number of candidates C; then C amounts, integer nano-dollars, in order of preference
--
-- Replies (flat arrays of strings):
--   {'ok', candidate index (1-based), amount, expires ms, 'new' | 'existing'}
--   {'plan', stored plan name}                       the caller assumed another plan: retry
--   {'killed', 'tenant' | 'feature'}
--   {'requests', window, requests, max requests, resets s}
--   {'budget', window, used, held, effective limit, resets s, candidate amount, carried}
--   {'duplicate', state}                             the id was used and already settled
local state, holds, record = KEYS[1], KEYS[2], KEYS[3]
local base = base_of(state)

local meta = redis.call('HMGET', state, 't', 'plan', 'k', 'k:' .. ARGV[5])
local now = clock_ms(ARGV[1], meta[1])
local now_s = math.floor(now / 1000)

local plan = meta[2] or ARGV[3]
if plan ~= ARGV[2] then
  return { 'plan', plan }
end
if meta[3] then
  return { 'killed', 'tenant' }
end
if ARGV[5] ~= '' and meta[4] then
  return { 'killed', 'feature' }
end

local done_ttl = ARGV[8]
reclaim(state, holds, base, now, tonumber(ARGV[7]), done_ttl)

-- A retried reserve with the same id gets the same hold, never a second one.
local existing = redis.call('HMGET', record, 's', 'a', 'e', 'i')
if existing[1] then
  if existing[1] == 'h' then
    return { 'ok', existing[4], existing[2], existing[3], 'existing' }
  end
  return { 'duplicate', existing[1] }
end

local held = num(redis.call('HGET', state, 'held'))
local n_limits = tonumber(ARGV[9])
local limits = {}
local i = 10
for n = 1, n_limits do
  local window = ARGV[i]
  local start, finish = period(window, now_s)
  local c, r, q = window_counters(state, window, start)
  local max_cost = tonumber(ARGV[i + 1])
  local carried = 0
  local cap = tonumber(ARGV[i + 3])
  if max_cost >= 0 and cap > 0 then
    -- Rollover: unused budget of the preceding period only, capped; it never compounds
    -- because q is that period's own committed spend, not its effective limit.
    carried = max_cost - q
    if carried < 0 then
      carried = 0
    end
    if carried > cap then
      carried = cap
    end
  end
  limits[n] = {
    window = window, start = start, finish = finish, cost = c, requests = r, prev = q,
    max_cost = max_cost, max_requests = tonumber(ARGV[i + 2]), carried = carried,
  }
  i = i + 4
end
local n_candidates = tonumber(ARGV[i])

-- Request limits do not depend on the candidate: the first one reached refuses the call.
for _, l in ipairs(limits) do
  if l.max_requests >= 0 and l.requests + 1 > l.max_requests then
    return { 'requests', l.window, fmt(l.requests), fmt(l.max_requests), fmt(l.finish) }
  end
end

local chosen, refusal
for k = 1, n_candidates do
  local amount = tonumber(ARGV[i + k])
  local failed = nil
  for _, l in ipairs(limits) do
    if l.max_cost >= 0 and l.cost + held + amount > l.max_cost + l.carried then
      failed = l
      break
    end
  end
  if not failed then
    chosen = k
    break
  end
  refusal = { 'budget', failed.window, fmt(failed.cost), fmt(held), fmt(failed.max_cost + failed.carried),
    fmt(failed.finish), fmt(amount), fmt(failed.carried) }
end
if not chosen then
  return refusal
end

local amount = tonumber(ARGV[i + chosen])
local windows = {}
for n, l in ipairs(limits) do
  put_window(state, l.window, l.start, l.cost, l.requests + 1, l.prev)
  windows[n] = l.window
end
local expires = now + tonumber(ARGV[6])
redis.call('HSET', state, 'held', fmt(held + amount), 't', fmt(now))
redis.call('HSET', record, 's', 'h', 'a', fmt(amount), 'e', fmt(expires), 'i', fmt(chosen),
  'f', ARGV[5], 'w', table.concat(windows, ','))
redis.call('ZADD', holds, fmt(expires), ARGV[4])
return { 'ok', fmt(chosen), fmt(amount), fmt(expires), 'new' }
