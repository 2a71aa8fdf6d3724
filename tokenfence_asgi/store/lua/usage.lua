-- USAGE: a tenant's daily usage where it lives now (read only).
--
-- KEYS[1] state: tenant state TB.."s"
-- KEYS[2] days: its daily usage TB.."d"
-- ARGV[1] pool: the pool the caller assumed (encoded) or ''
--
-- Reply: {'usage', 0, stored plan or '', day, value, day, value, ...} (see _lib.lua for the
--        value) | {'moved', 0, where the tenant lives now}
local meta = redis.call('HMGET', KEYS[1], 'loc', 'pool', 'plan')
local elsewhere = moved(meta[1], meta[2], ARGV[1])
if elsewhere then
  return { 'moved', 0, elsewhere }
end
local reply = { 'usage', 0, meta[3] or '' }
for _, x in ipairs(redis.call('HGETALL', KEYS[2])) do
  reply[#reply + 1] = x
end
return reply
