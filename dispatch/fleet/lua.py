"""Every Lua script of the fleet: the Redis job state machine, leases, hand-backs, heartbeats.

Each script is one atomic step. Times come from the Redis server (``TIME``), so leases do not
depend on the workers' clocks.
Stream entries are JSON in the field ``d``. The scripts build a few key names from prefixes
passed as arguments (one Redis server, not Redis Cluster).
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
"""

# The done-stream entry: the job id, with the result inline when it is small (ARGV[4] is JSON).
_DONE_ENTRY = """
local function done_entry(job_id, result_json)
  if string.len(result_json) <= 65536 then
    return '{"job_id":' .. cjson.encode(job_id) .. ',"result":' .. result_json .. '}'
  end
  return cjson.encode({job_id = job_id})
end
"""

# KEYS: job, events, cancel flag, session owner, leases, session trace, session hash
# ARGV: job_id, worker, lease_ms, retention_s, events maxlen, job key prefix,
#       '1' if the job starts a new session
# Returns action, attempt, detail, and how many earlier attempts were handed back (not failures).
# A queued job holds a lease too (from submission, or from the sweeper's re-send), so a delivery
# that is never claimed (its worker died first, or the broker lost the message) is re-sent.
START = (
    _NOW
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'skip', 0, 'unknown job (expired or never submitted)', 0} end
if status == 'running' then
  local lease = redis.call('ZSCORE', KEYS[5], ARGV[1])
  if lease and tonumber(lease) > now_ms then return {'skip', 0, 'running elsewhere', 0} end
elseif status ~= 'queued' then
  return {'skip', 0, 'already ' .. status, 0}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
local handbacks = tonumber(redis.call('HGET', KEYS[1], 'handbacks') or '0')
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2])
redis.call('HDEL', KEYS[1], 'wseq')
redis.call('HSETNX', KEYS[1], 'started_at', now_s)
redis.call('ZADD', KEYS[5], now_ms + tonumber(ARGV[3]), ARGV[1])
local kind = 'started'
if attempt > 1 then kind = 'restarted' end
local entry = cjson.encode({kind = 'job', type = kind, attempt = attempt, worker = ARGV[2]})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'd', entry)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'cancelled', attempt, '', handbacks} end
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[1] then
  local owner_status = redis.call('HGET', ARGV[6] .. owner, 'status')
  if owner_status == 'queued' or owner_status == 'running' then
    return {'busy', attempt, owner, handbacks}
  end
end
if ARGV[7] == '1' and attempt == 1
   and (redis.call('EXISTS', KEYS[6]) == 1 or redis.call('EXISTS', KEYS[7]) == 1) then
  return {'exists', attempt, '', handbacks}
end
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[4])
return {'run', attempt, '', handbacks}
"""
)

# Record a fan-out's children: each job only if its id is new (a resumed parent submits the same
# ids again and must not reset a child that runs or ran), every id in the parent's children set.
# KEYS: jobs (sorted set), leases, the parent's children set.
# ARGV: job key prefix, retention_s, queued lease ms, then per child: job id, submitted_at,
#       the job hash fields as a JSON object.
# Returns the ids of the children that are queued now (to send; a queued one sent twice starts
# once, since START skips a job that is already running).
SUBMIT_CHILDREN = (
    _NOW
    + """
local queued = {}
for i = 4, #ARGV, 3 do
  local job, key = ARGV[i], ARGV[1] .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then
    for field, value in pairs(cjson.decode(ARGV[i + 2])) do
      redis.call('HSET', key, field, value)
    end
    redis.call('EXPIRE', key, ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[i + 1], job)
    redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[3]), job)
  end
  redis.call('SADD', KEYS[3], job)
  if redis.call('HGET', key, 'status') == 'queued' then table.insert(queued, job) end
end
redis.call('EXPIRE', KEYS[3], ARGV[2])
return queued
"""
)

# KEYS: job, events, leases, session owner, cancel flag
# ARGV: job_id, attempt, status, result json, error, retention_s, events maxlen, done key prefix
FINISH = (
    _NOW
    + _DONE_ENTRY
    + """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4], 'error', ARGV[5],
  'finished_at', now_s)
local entry = cjson.encode({kind = 'job', type = 'finished', status = ARGV[3]})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'd', entry)
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
redis.call('DEL', KEYS[5])
local dispatcher = redis.call('HGET', KEYS[1], 'dispatcher')
if dispatcher and dispatcher ~= '' then
  local done = ARGV[8] .. dispatcher .. ':done'
  redis.call('XADD', done, 'MAXLEN', '~', 100000, '*', 'd', done_entry(ARGV[1], ARGV[4]))
  redis.call('EXPIRE', done, ARGV[6])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""
)

# Cancel a job, or (mode 'reject') fail a job that was never started because its payload was bad.
# KEYS: job, events, cancel flag, cancels stream, leases
# ARGV: job_id, retention_s, events maxlen, result json, event entry json,
#       done key prefix, session key prefix, mode ('cancel' or 'reject'), error text
CANCEL = (
    _NOW
    + _DONE_ENTRY
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if status == 'running' and ARGV[8] == 'cancel' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'd', cjson.encode({job_id = ARGV[1]}))
  redis.call('EXPIRE', KEYS[4], ARGV[2])
  return 'requested'
end
if status ~= 'queued' then return 'finished' end
local final = 'cancelled'
if ARGV[8] == 'reject' then final = 'error' end
redis.call('HSET', KEYS[1], 'status', final, 'result', ARGV[4], 'error', ARGV[9],
  'finished_at', now_s)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[5])
local entry = cjson.encode({kind = 'job', type = 'finished', status = final})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'd', entry)
redis.call('ZREM', KEYS[5], ARGV[1])
local owner_key = ARGV[7] .. redis.call('HGET', KEYS[1], 'session_id') .. ':owner'
if redis.call('GET', owner_key) == ARGV[1] then redis.call('DEL', owner_key) end
local dispatcher = redis.call('HGET', KEYS[1], 'dispatcher')
if dispatcher and dispatcher ~= '' then
  local done = ARGV[6] .. dispatcher .. ':done'
  redis.call('XADD', done, 'MAXLEN', '~', 100000, '*', 'd', done_entry(ARGV[1], ARGV[4]))
  redis.call('EXPIRE', done, ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return final
"""
)

# KEYS: leases. ARGV: job key prefix, lease_ms, then job id / attempt pairs.
# Renews the jobs this worker still owns; returns the ids it no longer owns (taken over).
RENEW = (
    _NOW
    + """
local lost = {}
for i = 3, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  local status = redis.call('HGET', key, 'status')
  if status == 'running' and redis.call('HGET', key, 'attempt') == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[i])
  elseif status == 'running' or status == 'queued' then
    table.insert(lost, ARGV[i])
  end
end
return lost
"""
)

# KEYS: leases. ARGV: job key prefix, requeue grace ms, max jobs per sweep.
# Marks every job whose lease lapsed as queued again (with a grace lease, so a failed re-send is
# retried after the grace) and returns job id, spec json and attempt for each, flattened.
CLAIM_LAPSED = (
    _NOW
    + """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, ARGV[3])
local out = {}
for _, job in ipairs(lapsed) do
  local key = ARGV[1] .. job
  local status = redis.call('HGET', key, 'status')
  if status == 'running' or status == 'queued' then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), job)
    table.insert(out, job)
    table.insert(out, redis.call('HGET', key, 'spec') or '')
    table.insert(out, redis.call('HGET', key, 'attempt') or '0')
  else
    redis.call('ZREM', KEYS[1], job)
  end
end
return out
"""
)

# KEYS: leases. ARGV: job key prefix, requeue grace ms, events maxlen, worker, then job id /
# attempt pairs. Marks this worker's running jobs queued again (a hand-back at shutdown, counted
# in ``handbacks`` so it is not taken for a failed attempt) and returns job id, spec json and
# attempt for each, flattened.
HAND_BACK = (
    _NOW
    + """
local out = {}
for i = 5, #ARGV, 2 do
  local job, attempt = ARGV[i], ARGV[i + 1]
  local key = ARGV[1] .. job
  local status = redis.call('HGET', key, 'status')
  if status == 'running' and redis.call('HGET', key, 'attempt') == attempt then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HINCRBY', key, 'handbacks', 1)
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), job)
    local entry = cjson.encode({kind = 'job', type = 'handed_back', attempt = tonumber(attempt),
      worker = ARGV[4]})
    redis.call('XADD', key .. ':events', 'MAXLEN', '~', ARGV[3], '*', 'd', entry)
    table.insert(out, job)
    table.insert(out, redis.call('HGET', key, 'spec') or '')
    table.insert(out, attempt)
  end
end
return out
"""
)

# KEYS: worker record, workers set. ARGV: record ttl_s, worker name, then hash field / value pairs.
BEAT = (
    _NOW
    + """
redis.call('HSET', KEYS[1], 'beat_ms', now_ms, unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], now_ms, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[1]) * 1000)
redis.call('EXPIRE', KEYS[2], ARGV[1])
return now_ms
"""
)

# The fenced writes of one BatchWriter batch: every write a running job makes (events, trace,
# progress, session summary), grouped by the job attempt that made it. A group is applied only
# while its job is ``running`` under that attempt (the fencing token); a stale worker's group is
# refused whole. ``wseq`` in the job hash is the writer sequence of the last write applied for the
# attempt, so writes resent after a lost reply are skipped, not stored twice. One attempt's
# appends to one stream become one entry (a JSON list when there are several).
# KEYS: every key the batch writes (each once).
# ARGV: groups of: job key index, attempt, op count, then per op: kind ('x' stream append,
#   'h' hash set, 'z' sorted-set add), key index, writer sequence, arg count, args
#   (x: maxlen or '', payload; h: field, value...; z: score, member...).
# Returns the 1-based numbers of the refused groups.
FENCED_WRITES = """
local refused = {}
local i, group = 1, 0
while i <= #ARGV do
  group = group + 1
  local job = KEYS[tonumber(ARGV[i])]
  local state = redis.call('HMGET', job, 'attempt', 'status', 'wseq')
  local owned = state[1] == ARGV[i + 1] and state[2] == 'running'
  local applied = tonumber(state[3] or '0') or 0
  local last = applied
  local ops = tonumber(ARGV[i + 2])
  if not owned then table.insert(refused, group) end
  i = i + 3
  local streams, order = {}, {}
  for _ = 1, ops do
    local kind, key, seq, n = ARGV[i], KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2]),
      tonumber(ARGV[i + 3])
    if owned and seq > applied then
      if kind == 'x' then
        local stream = streams[key]
        if not stream then
          stream = {maxlen = ARGV[i + 4], items = {}}
          streams[key] = stream
          table.insert(order, key)
        end
        table.insert(stream.items, ARGV[i + 5])
      elseif kind == 'h' then
        redis.pcall('HSET', key, unpack(ARGV, i + 4, i + 3 + n))
      else
        redis.pcall('ZADD', key, unpack(ARGV, i + 4, i + 3 + n))
      end
      last = seq
    end
    i = i + 4 + n
  end
  for _, key in ipairs(order) do
    local stream = streams[key]
    local data = stream.items[1]
    if #stream.items > 1 then data = '[' .. table.concat(stream.items, ',') .. ']' end
    if stream.maxlen == '' then
      redis.pcall('XADD', key, '*', 'd', data)
    else
      redis.pcall('XADD', key, 'MAXLEN', '~', stream.maxlen, '*', 'd', data)
    end
  end
  if last > applied then redis.call('HSET', job, 'wseq', last) end
end
return refused
"""
