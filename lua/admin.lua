-- ADMIN: operator changes to one state hash (a tenant's, or the global switches).
--
-- KEYS[1]: state hash (tenant) or global switch hash
-- ARGV[1]: operation: 'set_plan' | 'kill' | 'revive'
-- ARGV[2]: plan name (set_plan), or the switch field: 'k' or 'k:'..encoded feature
--
-- Reply: {previous value or ''}
local key, op, arg = KEYS[1], ARGV[1], ARGV[2]
if op == 'set_plan' then
  local previous = redis.call('HGET', key, 'plan')
  redis.call('HSET', key, 'plan', arg)
  return { previous or '' }
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
return { previous or '' }
