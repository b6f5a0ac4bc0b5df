"""The script that adds invalidation rules to Redis atomically (proxy/invalidation/invalidator.py,
docs/design.md §3): a new generation, the rules, both trims (age and count) and the announcement
in one step, so every replica learns rules in generation order and the table stays bounded."""

from __future__ import annotations

from proxy.vocabulary import (
    INVALIDATION_GENERATION_KEY,
    INVALIDATION_RULES_KEY,
)

ADD_RULES_KEYS = (INVALIDATION_GENERATION_KEY, INVALIDATION_RULES_KEY)
# KEYS: generation, rules (one hash tag: one cluster slot). ARGV: the channel (not a key: PUBLISH
# reaches every node of a cluster), max age in seconds, max rules, then one selector (JSON)
# each. A generation is the Redis server's clock in microseconds (or the previous generation + 1),
# so it keeps growing even when Redis restarts empty and replicas still hold older ones.
# Answers {generation, previous, time}; publishes "<generation> <previous> <time>\n<json>...".
# Numbers go through string.format: Lua's tostring would print them as 1.7e+15.
# Past max rules, `collapse` does what RuleBook._collapse does (proxy/invalidation/rules.py):
# each tenant's rules, largest tenant first, become one {"tenant": T} rule at their newest
# generation and time until a quarter of the room is free, else everything becomes one
# {"all": true} rule. Generations stay below 2^53, so tonumber compares them exactly.
ADD_RULES = """
local function newer(a, b) return tonumber(a) > tonumber(b) end
local function collapse(key, max)
  local target = math.max(1, math.floor(max * 3 / 4))
  local held = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local groups, order, count = {}, {}, #held / 2
  local top = {g = '0', at = held[2], n = count}
  for i = 1, #held, 2 do
    local member, at = held[i], held[i + 1]
    local space = string.find(member, ' ', 1, true)
    local g = string.sub(member, 1, space - 1)
    local ok, selector = pcall(cjson.decode, string.sub(member, space + 1))
    local tenant = ''
    if ok and type(selector) == 'table' and selector['all'] ~= true
        and type(selector['tenant']) == 'string' then
      tenant = selector['tenant']
    end
    local group = groups[tenant]
    if not group then
      group = {tenant = tenant, n = 0, members = {}, g = g, at = at}
      groups[tenant] = group
      order[#order + 1] = group
    end
    group.n = group.n + 1
    group.members[group.n] = member
    if newer(g, group.g) then group.g = g end
    if newer(at, group.at) then group.at = at end
    if newer(g, top.g) then top.g = g end
    if newer(at, top.at) then top.at = at end
  end
  table.sort(order, function(a, b) return a.n > b.n end)
  local merged = {}
  for _, group in ipairs(order) do
    if count <= target then break end
    if group.n > 1 then
      merged[#merged + 1] = group
      count = count - group.n + 1
    end
  end
  if count > target then
    redis.call('DEL', key)
    redis.call('ZADD', key, top.at, top.g .. ' {"all":true}')
    return
  end
  for _, group in ipairs(merged) do
    for i = 1, group.n, 500 do
      redis.call('ZREM', key, unpack(group.members, i, math.min(i + 499, group.n)))
    end
    local selector = '{"all":true}'
    if group.tenant ~= '' then selector = cjson.encode({tenant = group.tenant}) end
    redis.call('ZADD', key, group.at, group.g .. ' ' .. selector)
  end
end

local prev = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = redis.call('TIME')
local g = string.format('%d', math.max(tonumber(now[1]) * 1000000 + tonumber(now[2]), prev + 1))
local p = string.format('%d', prev)
redis.call('SET', KEYS[1], g)
local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(at) - tonumber(ARGV[2]))
local lines = {g .. ' ' .. p .. ' ' .. at}
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[2], at, g .. ' ' .. ARGV[i])
  lines[#lines + 1] = ARGV[i]
end
if redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[3]) then collapse(KEYS[2], tonumber(ARGV[3])) end
redis.call('PUBLISH', ARGV[1], table.concat(lines, '\\n'))
return {g, p, at}
"""
