-- MOVE: one step of moving a tenant between tags (its own, or a pool's) so that its spend, open
-- holds, plan and switches follow it, never lost and never counted twice. set_pool runs the
-- steps in order: 'out' at the source (marks the tenant as moved and returns a dump of it),
-- 'in' at the destination (merges the dump), 'point' at the tenant's own tag when neither end
-- is it (the directory), 'drop' at the source (deletes what was moved, keeps a forwarding
-- mark). Each step is idempotent for one move id, so an interrupted set_pool is completed by
-- running it again. Spend already charged to a pool's own limits stays with that pool. The
-- tenant's daily usage moves with it; its ledger entries stay in the stream they were written to.
--
-- KEYS[1] state: tenant state at this tag TB.."s"
-- KEYS[2] holds: holds of this tag TAG.."h"
-- KEYS[3] pool_state?: pool state TAG.."pool:s" (when this tag is a pool's)
-- ARGV[1] step: 'begin' | 'out' | 'in' | 'point' | 'drop' | 'end'
-- ARGV[2] tenant: tenant id (encoded)
-- ARGV[3] other: the other end: '-' (own tag) or a pool (encoded)
-- ARGV[4] move_id: the move's id
-- ARGV[5] here: this tag's pool (encoded), or '-' for the own tag
-- ARGV[6] extra...: 'in': the dump 'out' returned (after its first two items); 'drop': ttl of
--         the forwarding stubs left for moved holds, integer seconds; else nothing
--
-- Replies: {'dump', 0, ...} from 'out'; {'done', 0} ; {'moved', 0, where the tenant lives}
local state, holds, pool_state = KEYS[1], KEYS[2], KEYS[3]
local step, tenant, other, move_id, here = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tag = string.sub(holds, 1, -2)
local tb = string.sub(state, 1, -2)
local prefix = tenant .. '/'
local MOVE_FIELDS = { loc = true, mv = true, mv_in = true, pool = true, dropped = true,
  mvid = true, mvfrom = true, mvto = true, lt = true } -- lt: the ledger stream's, stays

local function own_holds()
  local out = {}
  local members = redis.call('ZRANGE', holds, 0, -1, 'WITHSCORES')
  for k = 1, #members, 2 do
    if string.sub(members[k], 1, #prefix) == prefix then
      out[#out + 1] = { id = string.sub(members[k], #prefix + 1), expires = members[k + 1] }
    end
  end
  return out
end

if step == 'point' then
  redis.call('HSET', state, 'loc', other)
  return { 'done', 0 }
end

-- The own tag's record of a move in progress (from ARGV[5], to ARGV[3], id ARGV[4]), so an
-- interrupted set_pool resumes it with the same id.
if step == 'begin' then
  redis.call('HSET', state, 'mvid', move_id, 'mvfrom', here, 'mvto', other)
  return { 'done', 0 }
end
if step == 'end' then
  if redis.call('HGET', state, 'mvid') == move_id then
    redis.call('HDEL', state, 'mvid', 'mvfrom', 'mvto')
  end
  return { 'done', 0 }
end

if step == 'out' then
  local meta = redis.call('HMGET', state, 'loc', 'mv', 'pool', 'sv', 't')
  if meta[1] and meta[2] ~= move_id then
    return { 'moved', 0, meta[1] }
  end
  if here ~= '-' and not meta[1] and meta[3] ~= here then
    return { 'moved', 0, '-' }
  end
  if not meta[4] and meta[5] then
    migrate(state, tb) -- a dump in this layout only
  end
  redis.call('HSET', state, 'loc', other, 'mv', move_id)
  local reply = { 'dump', 0 }
  local flat = redis.call('HGETALL', state)
  local kept = {}
  for k = 1, #flat, 2 do
    if not MOVE_FIELDS[flat[k]] then
      kept[#kept + 1] = flat[k]
      kept[#kept + 1] = flat[k + 1]
    end
  end
  reply[#reply + 1] = fmt(#kept)
  for _, x in ipairs(kept) do
    reply[#reply + 1] = x
  end
  local windows = {}
  for window in pairs(SIZES) do
    local pairs_ = redis.call('HGETALL', tb .. 'w:' .. window)
    if #pairs_ > 0 then
      windows[#windows + 1] = { window, pairs_ }
    end
  end
  reply[#reply + 1] = fmt(#windows)
  for _, w in ipairs(windows) do
    reply[#reply + 1] = w[1]
    reply[#reply + 1] = fmt(#w[2])
    for _, x in ipairs(w[2]) do
      reply[#reply + 1] = x
    end
  end
  local records = {}
  for _, h in ipairs(own_holds()) do
    local v = redis.call('HMGET', tb .. 'r:' .. h.id, 's', 'a', 'i', 'f', 'fl')
    if v[1] == 'h' then
      records[#records + 1] = { h.id, h.expires, v[2] or '0', v[3] or '1', v[4] or '', v[5] or '0' }
    end
  end
  reply[#reply + 1] = fmt(#records)
  for _, r in ipairs(records) do
    for _, x in ipairs(r) do
      reply[#reply + 1] = x
    end
  end
  -- The daily usage moves with the tenant too (bounded: one field per day kept).
  local days = redis.call('HGETALL', tb .. 'd')
  reply[#reply + 1] = fmt(#days)
  for _, x in ipairs(days) do
    reply[#reply + 1] = x
  end
  return reply
end

if step == 'drop' then
  local meta = redis.call('HMGET', state, 'loc', 'mv', 'dropped')
  if meta[2] ~= move_id or meta[3] == move_id then
    return { 'done', 0 }
  end
  local held = num(redis.call('HGET', state, 'held'))
  if pool_state and held ~= 0 then
    redis.call('HINCRBY', pool_state, 'held', fmt(-held))
  end
  for _, h in ipairs(own_holds()) do
    local record = tb .. 'r:' .. h.id
    if redis.call('HGET', record, 's') == 'h' then
      -- A forwarding stub: a commit or release that comes here follows the hold.
      redis.call('DEL', record)
      redis.call('HSET', record, 's', 'm', 'to', other)
      redis.call('EXPIRE', record, ARGV[6])
    end
    redis.call('ZREM', holds, prefix .. h.id)
  end
  for window in pairs(SIZES) do
    redis.call('DEL', tb .. 'w:' .. window)
  end
  redis.call('DEL', tb .. 'd')
  local gone = {}
  for _, field in ipairs(redis.call('HKEYS', state)) do
    if field ~= 'loc' and field ~= 'mv' and not string.match(field, '^mv[a-z]+$') then
      gone[#gone + 1] = field
    end
  end
  if #gone > 0 then
    redis.call('HDEL', state, unpack(gone))
  end
  redis.call('HSET', state, 'dropped', move_id)
  return { 'done', 0 }
end

if step ~= 'in' then
  return redis.error_reply('tokenfence: unknown move step ' .. tostring(step))
end
local dest = redis.call('HMGET', state, 'mv_in', 'sv', 't')
if dest[1] == move_id then
  return { 'done', 0 }
end
if not dest[2] and dest[3] then
  migrate(state, tb)
end

-- Parse the dump: each section is a count followed by its items.
local i = 6
local fields = {}
local n = tonumber(ARGV[i])
for k = 1, n, 2 do
  fields[ARGV[i + k]] = ARGV[i + k + 1]
end
i = i + 1 + n
local sliding = {}
local windows = tonumber(ARGV[i])
i = i + 1
for _ = 1, windows do
  local window, count = ARGV[i], tonumber(ARGV[i + 1])
  local map = {}
  for k = 1, count, 2 do
    map[ARGV[i + 1 + k]] = ARGV[i + 2 + k]
  end
  sliding[window] = map
  i = i + 2 + count
end
local records = {}
for _ = 1, tonumber(ARGV[i]) do
  records[#records + 1] = { id = ARGV[i + 1], expires = ARGV[i + 2], a = ARGV[i + 3],
    idx = ARGV[i + 4], f = ARGV[i + 5], fl = ARGV[i + 6] }
  i = i + 6
end
i = i + 1
local days = {}
for k = 1, num(ARGV[i]), 2 do
  days[#days + 1] = { ARGV[i + k], ARGV[i + k + 1] }
end

-- Merge the tenant's state: counters of the same period add up, a newer period wins, held
-- amounts add, plan and switches follow the tenant.
local current = {}
local flat = redis.call('HGETALL', state)
for k = 1, #flat, 2 do
  current[flat[k]] = flat[k + 1]
end
local out = {}
local function put(field, value)
  out[#out + 1] = field
  out[#out + 1] = value
end
local function counter(field)
  local window, suffix = string.match(field, '^(.-):([pecqrabs])$')
  if window and SIZES[window] then
    return window, suffix
  end
  return nil
end
for field, value in pairs(fields) do
  local window, suffix = counter(field)
  local feature_window = string.match(field, '^(.-):g:')
  if window and suffix == 'p' then
    local mine, theirs = num(current[field]), num(value)
    if theirs > mine then
      for _, suffix in ipairs({ ':p', ':c', ':r', ':q', ':a', ':b' }) do
        put(window .. suffix, fields[window .. suffix] or '0')
      end
      if fields[window .. ':e'] then
        put(window .. ':e', fields[window .. ':e'])
      end
    elseif theirs == mine then
      for _, suffix in ipairs({ ':c', ':r' }) do
        put(window .. suffix, fmt(num(current[window .. suffix]) + num(fields[window .. suffix])))
      end
      -- ':q' -1 marks a first period (no rollover): still one only if it is on both sides.
      local q_mine, q_theirs = num(current[window .. ':q']), num(fields[window .. ':q'])
      if q_mine < 0 and q_theirs < 0 then
        put(window .. ':q', '-1')
      else
        put(window .. ':q', fmt(math.max(0, q_mine) + math.max(0, q_theirs)))
      end
      for _, suffix in ipairs({ ':a', ':b' }) do
        put(window .. suffix, fmt(math.max(num(current[window .. suffix]),
          num(fields[window .. suffix]))))
      end
    end
  elseif window then
    -- the period's other counters were merged with its ':p' field; share sums are recomputed
  elseif feature_window and SIZES[feature_window] then
    -- a feature's cost this period: the newer period wins, the same one adds up
    local mp, tp = num(current[feature_window .. ':p']), num(fields[feature_window .. ':p'])
    if tp > mp then
      put(field, value)
    elseif tp == mp then
      put(field, fmt(num(current[field]) + num(value)))
    end
  elseif field == 'held' or field == 'nh' or string.sub(field, 1, 3) == 'hf:' then
    put(field, fmt(num(current[field]) + num(value)))
  elseif field == 't' then
    put(field, fmt(math.max(num(current[field]), num(value))))
  else
    put(field, value) -- plan, kill switches
  end
end

-- Open holds: a hold whose record already exists here (other than a forwarding stub) was
-- settled here while the move was in flight; it is not imported, and its amount leaves the
-- merged held totals.
local imported = 0
local function add_to(field, delta)
  local base = num(current[field])
  for k = 1, #out, 2 do
    if out[k] == field then
      base = num(out[k + 1])
      out[k + 1] = fmt(base + delta)
      return
    end
  end
  put(field, fmt(base + delta))
end
for _, r in ipairs(records) do
  local record = tb .. 'r:' .. r.id
  local existing = redis.call('HGET', record, 's')
  if existing and existing ~= 'm' then
    add_to('held', -num(r.a))
    add_to('nh', -1)
    if r.fl == '1' then
      add_to('hf:' .. r.f, -num(r.a))
    end
  else
    redis.call('DEL', record) -- a forwarding stub left when the hold moved away from here
    redis.call('HSET', record, 's', 'h', 'a', r.a, 'e', r.expires, 'i', r.idx, 'f', r.f,
      'fl', r.fl)
    redis.call('ZADD', holds, r.expires, prefix .. r.id)
    imported = imported + num(r.a)
  end
end
put('mv_in', move_id)
put('rv', '') -- held and feature costs were merged: the share sums are recomputed
put('sv', '2')
if here ~= '-' then
  put('pool', here)
end
redis.call('HSET', state, unpack(out))
redis.call('HDEL', state, 'loc', 'mv', 'dropped')
if here == '-' then
  redis.call('HDEL', state, 'pool')
end
if pool_state and imported ~= 0 then
  redis.call('HINCRBY', pool_state, 'held', fmt(imported))
end

-- Daily usage: counters of the same day add up; limit and plan already here win (newer).
local dkey = tb .. 'd'
local dargs = {}
local DAY = '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(-?%d*),(.*)$'
for _, d in ipairs(days) do
  local field, value = d[1], d[2]
  local mine = redis.call('HGET', dkey, field)
  if mine then
    local a = { string.match(value, DAY) }
    local b = { string.match(mine, DAY) }
    local merged = {}
    for k = 1, 6 do
      merged[k] = fmt(num(a[k]) + num(b[k]))
    end
    merged[7] = (b[7] ~= '' and b[7]) or a[7] or ''
    merged[8] = (b[8] ~= '' and b[8]) or a[8] or ''
    value = table.concat(merged, ',')
  end
  dargs[#dargs + 1] = field
  dargs[#dargs + 1] = value
end
if #dargs > 0 then
  redis.call('HSET', dkey, unpack(dargs))
  if redis.call('TTL', dkey) < 0 then
    redis.call('EXPIRE', dkey, fmt(400 * 86400)) -- renewed by the next day's first write
  end
end

-- Sliding windows: bucket by bucket; the current bucket of either side becomes a bucket field.
local function buckets_of(map)
  local out, totals = {}, { c = 0, r = 0 }
  for field, value in pairs(map) do
    if string.match(field, '^-?%d+$') then
      local c, r = string.match(value, '^(%d+),(%d+)$')
      out[field] = { tonumber(c), tonumber(r) }
    end
  end
  if map.ci then
    local b = out[map.ci] or { 0, 0 }
    out[map.ci] = { b[1] + num(map.cc), b[2] + num(map.cr) }
  end
  return out
end
for window, map in pairs(sliding) do
  local key = tb .. 'w:' .. window
  local mine = {}
  local mflat = redis.call('HGETALL', key)
  for k = 1, #mflat, 2 do
    mine[mflat[k]] = mflat[k + 1]
  end
  local args = { 'c', fmt(num(mine.c) + num(map.c)), 'r', fmt(num(mine.r) + num(map.r)) }
  if map.o or mine.o then
    args[#args + 1] = 'o'
    args[#args + 1] = fmt(math.min(num(mine.o or map.o), num(map.o or mine.o)))
  end
  for _, field in ipairs({ 'A', 'B' }) do
    -- alert marks: the higher level wins, so none is reported twice
    if map[field] and math.floor(num(map[field]) / MARK)
      > math.floor(num(mine[field]) / MARK) then
      args[#args + 1] = field
      args[#args + 1] = map[field]
    end
  end
  local merged = buckets_of(mine)
  for field, b in pairs(buckets_of(map)) do
    local m = merged[field] or { 0, 0 }
    merged[field] = { m[1] + b[1], m[2] + b[2] }
  end
  for field, b in pairs(merged) do
    args[#args + 1] = field
    args[#args + 1] = fmt(b[1]) .. ',' .. fmt(b[2])
  end
  redis.call('HDEL', key, 'ci', 'cc', 'cr')
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, fmt(SIZES[window] * 1000 + 60000))
end
return { 'done', 0 }
