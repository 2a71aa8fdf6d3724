-- RELEASE: drop a hold without charging (the call failed before costing anything).
-- Idempotent, and a no-op for an id already committed, released or reclaimed.
--
-- KEYS[1] state: tenant state TB.."s"
-- KEYS[2] record: reservation record TB.."r:"..id
-- KEYS[3] holds: holds of the tag TAG.."h"
-- KEYS[4] pool_state?: pool state TAG.."pool:s" (pool members only)
-- ARGV[1] now_ms: integer ms since the epoch, or '' to use the server's TIME
-- ARGV[2] tenant: tenant id (encoded)
-- ARGV[3] reservation: reservation id (encoded)
-- ARGV[4] record_ttl_s: record ttl after settling, integer seconds
-- ARGV[5] reclaim: most expired holds reclaimed by this call
-- ARGV[6] pool: the pool the caller assumed (encoded) or ''
-- ARGV[7] follow_stubs: '1' to follow a forwarding stub of a moved hold, '0' not to
-- ARGV[8] default_plan: the plan of a tenant without one
-- ARGV[9] usage_days: days of daily usage kept
-- A release charges nothing and writes no ledger entry; it is counted in the daily usage.
--
-- Replies: {'released', 0, amount} | {'noop', 0, state or 'unknown'} | {'moved', 0, where}
local state, record, holds, pool_state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tag = string.sub(holds, 1, -2)
local v = redis.call('HMGET', record, 'a', 's', 'f', 'fl', 'to')
if v[2] == 'c' or v[2] == 'r' or v[2] == 'x' then
  return { 'noop', 0, v[2] }
end
if v[2] == 'm' and ARGV[7] == '1' then
  return { 'moved', 0, v[5], 'record' } -- the hold moved with its tenant
end
local meta = redis.call('HMGET', state, 't', 'loc', 'pool', 'plan')
local elsewhere = moved(meta[2], meta[3], ARGV[6])
if elsewhere then
  return { 'moved', 0, elsewhere, 'tenant' }
end
local now = clock_ms(ARGV[1], meta[1])
reclaim(tag, now, tonumber(ARGV[5]), ARGV[4], pool_state ~= nil)

v = redis.call('HMGET', record, 'a', 's', 'f', 'fl')
if v[2] ~= 'h' then
  return { 'noop', 0, v[2] or 'unknown' }
end
drop_hold(tag, string.sub(state, 1, -2), ARGV[2], ARGV[3], v, pool_state ~= nil)
redis.call('HSET', state, 't', fmt(now))
redis.call('HSET', record, 's', 'r')
redis.call('EXPIRE', record, ARGV[4])
day_add(string.sub(state, 1, -2), now, 0, 0, 0, 1, 0, 0, '', meta[4] or ARGV[8],
  tonumber(ARGV[9]))
return { 'released', 0, fmt(num(v[1])) }
