"""The Lua scripts of the Redis backend, one per step that must be atomic."""

# Each script checks first and writes after, so it is all-or-nothing (Redis
# refuses a script for lack of memory only before its first write).

# Keep the newest ARGV[2] members; return the ones removed (lowest scores).
INDEX_TRIM = """
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return {} end
local dropped = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
return dropped
"""

# KEYS: index; ARGV: member, score, ttl. Add or rescore the member, forget members
# scored more than ttl below it, and keep the index ttl past this add.
INDEX_ADD = """
local score = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], score, ARGV[1])
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (score - ttl))
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""

# Prepended to the scripts that use them. `keep` sets a TTL, or none for 0.
# `append` adds a member last to an ordered set (score: the last one's + 1, so
# the order is the order of writes whatever the workers' clocks say), keeps
# the newest `cap` and returns the members it dropped.
HELPERS = """
local function keep(key, ttl)
  if tonumber(ttl) > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
end
local function append(key, member, cap, ttl)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local score = 1
  if last[2] then score = tonumber(last[2]) + 1 end
  redis.call('ZADD', key, score, member)
  local dropped = redis.call('ZRANGE', key, 0, -(tonumber(cap) + 1))
  if #dropped > 0 then redis.call('ZREMRANGEBYRANK', key, 0, #dropped - 1) end
  keep(key, ttl)
  return dropped
end
"""

# A stream's registration (see Store.register_stream and RegisterStep): checks
# first, then writes that cannot fail, so it is all or nothing.
# KEYS: cmids, cmid_order, record, slots, lease, streams:active, session streams,
#       user slots
# ARGV: stream_id, has_cmid, cmid, ack, record, owner, lease_ttl, started,
#       limit, log_ttl, keep_ttl (0 = none), cap, user_limit
REGISTER = """
local id = ARGV[1]
if ARGV[2] == '1' then
  local earlier = redis.call('HGET', KEYS[1], ARGV[3])
  if earlier then return {'earlier', earlier} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'exists'} end
if redis.call('SISMEMBER', KEYS[4], id) == 0
   and redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[9]) then
  return {'full'}
end
if redis.call('SISMEMBER', KEYS[8], id) == 0
   and redis.call('SCARD', KEYS[8]) >= tonumber(ARGV[13]) then
  return {'user_full'}
end
redis.call('SADD', KEYS[4], id)
redis.call('EXPIRE', KEYS[4], ARGV[10])
redis.call('SADD', KEYS[8], id)
redis.call('EXPIRE', KEYS[8], ARGV[10])
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[10])
redis.call('SET', KEYS[5], ARGV[6], 'EX', ARGV[7])
redis.call('ZADD', KEYS[6], ARGV[8], id)
append(KEYS[7], id, ARGV[12], ARGV[11])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  for _, old in ipairs(append(KEYS[2], ARGV[3], ARGV[12], ARGV[11])) do
    redis.call('HDEL', KEYS[1], old)
  end
  keep(KEYS[1], ARGV[11])
end
return {'registered'}
"""

# A message append, guarded by the session's header (see PushOnceOp): nothing
# is written once the header is gone (-1: a delete won, the session must not
# come back) or differs from the one read (-2: read it again). Then the header,
# the session's index entries (as INDEX_ADD), and RPUSH unless the item's id is
# among the ids stored with the list. An id set (ZSCORE, O(log n)) rather than a
# scan of the list: the check costs the same whatever the messages' size, covers
# every message still in the list, and holds at most `cap` short ids.
# KEYS: header, list, ids, indexes...
# ARGV: seen, header, id, value, ttl (0 = none), cap, member, score
PUSH_ONCE = """
local now = redis.call('GET', KEYS[1])
if not now then return -1 end
if now ~= ARGV[1] then return -2 end
local ttl, score = tonumber(ARGV[5]), tonumber(ARGV[8])
redis.call('SET', KEYS[1], ARGV[2])
keep(KEYS[1], ttl)
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], score, ARGV[7])
  if ttl > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. (score - ttl))
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
if redis.call('ZSCORE', KEYS[3], ARGV[3]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
keep(KEYS[2], ttl)
append(KEYS[3], ARGV[3], ARGV[6], ttl)
return 1
"""

# Replace the last item of a list equal to ARGV[1] by ARGV[2] (a compare-and-set:
# 0 when none equals it any more), unless the guard key is gone (-1: the
# session was deleted, nothing is written). LPOS scans from the tail, where the
# item replaced (a session's newest reply) is. KEYS: list, guard; ARGV: old, new
SWAP_ITEM = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local at = redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1)
if not at then return 0 end
redis.call('LSET', KEYS[1], at, ARGV[2])
return 1
"""

# HDEL a field (and its order entry), with ARGV[2] == '1' only if its JSON
# value's stream_id is ARGV[3]. KEYS: hash, order; ARGV: field, check, stream_id
RELEASE_FIELD = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
if ARGV[2] == '1' and cjson.decode(value)['stream_id'] ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# Nine keys per stream: record, log, slots, lease, stop, session streams,
# cmids, cmid_order, user slots. ARGV: owner, lease_ttl, log_ttl, keep_ttl
# (0 = leave). Returns the stop flags.
KEEP_ALIVE = """
local stopped = {}
for i = 1, #KEYS, 9 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[3])
    redis.call('EXPIRE', KEYS[i + 2], ARGV[3])
    redis.call('EXPIRE', KEYS[i + 8], ARGV[3])
    redis.call('SET', KEYS[i + 3], ARGV[1], 'EX', ARGV[2])
    if tonumber(ARGV[4]) > 0 then
      for j = i + 5, i + 7 do redis.call('EXPIRE', KEYS[j], ARGV[4]) end
    end
  end
  stopped[#stopped + 1] = redis.call('EXISTS', KEYS[i + 4])
end
return stopped
"""

# Presence: an ordered set member -> deadline, on the Redis clock so that the
# workers' clocks do not matter. Expired members are dropped on every call.
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: presence; ARGV: member, ttl (s). The key lives as long as its last member.
PRESENCE_MARK = """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) * 1000))
return 1
"""

# KEYS: presence; ARGV: member. 1 when another member is present.
PRESENCE_OTHERS = """
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then others = others - 1 end
if others > 0 then return 1 end
return 0
"""

# XADD at ID 0-<seq>; a seq at or below the last one is ignored, so a write
# retried after a lost reply cannot fail or duplicate. With a fence (ARGV[5]):
# 0 while the fence key holds a value other than ARGV[5]. With ARGV[6] == '1',
# the epoch check: 2 (lost) unless the stream's record exists and the log is
# epoch ARGV[7]'s (seq 1, while not trimmed away, carries it as field 'e') and
# holds seq - 1 (an absent log only takes seq 1): a log that lost entries never
# gets a hole. KEYS: log, [record if checked], [fence if fenced]
# ARGV: seq, data, maxlen, ttl, holder ('' = no fence), check, epoch
LOG_APPEND = """
local fence = KEYS[2]
if ARGV[6] == '1' then fence = KEYS[3] end
if ARGV[5] ~= '' then
  local holder = redis.call('GET', fence)
  if holder and holder ~= ARGV[5] then return 0 end
end
local fields = {'d', ARGV[2]}
if ARGV[6] == '1' then
  local seq = tonumber(ARGV[1])
  if redis.call('EXISTS', KEYS[2]) == 0 then return 2 end
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if not last then
    if seq ~= 1 then return 2 end
    fields = {'d', ARGV[2], 'e', ARGV[7]}
  else
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
    if first[1] == '0-1' and first[2][4] ~= ARGV[7] then return 2 end
    if seq > tonumber(string.match(last[1], '%d+$')) + 1 then return 2 end
  end
end
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[3], '0-' .. ARGV[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[4])
if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller') then
  return added
end
return 1
"""
