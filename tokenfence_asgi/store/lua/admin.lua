-- ADMIN: operator changes to one state hash: a tenant's (where it lives now), a pool's, or the
-- global switches.
--
-- KEYS[1] state: tenant state TB.."s", pool state TAG.."pool:s", or the global switch hash
-- ARGV[1] op: 'set_plan' | 'kill' | 'revive'
-- ARGV[2] value: plan name (set_plan), or the switch field: 'k' or 'k:'..encoded feature
-- ARGV[3] target: 'tenant' (check the tenant lives here), or 'other'
-- ARGV[4] pool: the pool the caller assumed for the tenant (encoded) or ''
--
-- Reply: {'done', 0, previous value or ''} | {'moved', 0, where the tenant lives now}
local key, op, arg = KEYS[1], ARGV[1], ARGV[2]
if ARGV[3] == 'tenant' then
  local meta = redis.call('HMGET', key, 'loc', 'pool')
  local elsewhere = moved(meta[1], meta[2], ARGV[4])
  if elsewhere then
    return { 'moved', 0, elsewhere }
  end
end
if op == 'set_plan' then
  local previous = redis.call('HGET', key, 'plan')
  redis.call('HSET', key, 'plan', arg)
  return { 'done', 0, previous or '' }
end
if arg ~= 'k' and string.sub(arg, 1, 2) ~= 'k:' then
  return redis.error_reply('tokenfence: bad switch field ' .. arg)
end
local previous = redis.call('HGET', key, arg)
if op == 'kill' then
  redis.call('HSET', key, arg, '1')
elseif op == 'revive' then
  redis.call('HDEL', key, arg)
else
  return redis.error_reply('tokenfence: unknown admin operation ' .. tostring(op))
end
return { 'done', 0, previous or '' }
