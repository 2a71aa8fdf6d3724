-- APPROVAL: a pending tool-call approval, decided by an operator and used at most once.
--
-- KEYS[1] approval: the approval hash "<prefix>:{t.<tenant>}:ap:<id>" (fields action, state)
-- ARGV[1] op: 'create' | 'decide' | 'consume'
-- ARGV[2] operands...: create: action name, ttl in seconds; decide: 'approved' | 'denied'
--         (only a pending approval can be decided); consume: action name (an approved
--         approval for that action is deleted: single use)
--
-- Replies: {'done', 0, previous state} | {'missing', 0} | {'wrong_action', 0, action}
local key, op = KEYS[1], ARGV[1]
if op == 'create' then
  redis.call('HSET', key, 'action', ARGV[2], 'state', 'pending')
  redis.call('EXPIRE', key, ARGV[3])
  return { 'done', 0, 'new' }
end
local v = redis.call('HMGET', key, 'action', 'state')
if not v[2] then
  return { 'missing', 0 }
end
if op == 'decide' then
  if v[2] == 'pending' then
    redis.call('HSET', key, 'state', ARGV[2])
  end
  return { 'done', 0, v[2] }
end
if op == 'consume' then
  if v[1] ~= ARGV[2] then
    return { 'wrong_action', 0, v[1] }
  end
  if v[2] == 'approved' then
    redis.call('DEL', key)
  end
  return { 'done', 0, v[2] }
end
return redis.error_reply('tokenfence: unknown approval operation ' .. tostring(op))
