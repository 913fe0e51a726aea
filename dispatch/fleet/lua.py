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

# The fence: does this attempt still run the job? A stale worker (its lease lapsed and the job
# was started again, or it finished) gets false and must write nothing. Also returns the status.
_FENCE = """
local function runs(key, attempt)
  local state = redis.call('HMGET', key, 'status', 'attempt')
  return state[1] == 'running' and state[2] == attempt, state[1]
end
"""

# The tail of every step that ends a job's attempt with a result (finished, cancelled, awaiting
# approval): the dispatcher's done stream gets the job id, with the result inline when it is
# small (result_json is JSON), then the job and its events keep for the retention.
_HAND_RESULT = """
local function hand_result(key, events, job_id, result_json, done_prefix, retention)
  local dispatcher = redis.call('HGET', key, 'dispatcher')
  if dispatcher and dispatcher ~= '' then
    local entry
    if string.len(result_json) <= 65536 then
      entry = '{"job_id":' .. cjson.encode(job_id) .. ',"result":' .. result_json .. '}'
    else
      entry = cjson.encode({job_id = job_id})
    end
    local done = done_prefix .. dispatcher .. ':done'
    redis.call('XADD', done, 'MAXLEN', '~', 100000, '*', 'd', entry)
    redis.call('EXPIRE', done, retention)
  end
  redis.call('EXPIRE', key, retention)
  redis.call('EXPIRE', events, retention)
end
"""

# KEYS: job, events, cancel flag, session owner, leases, session trace, session hash
# ARGV: job_id, worker, lease_ms, retention_s, events maxlen, job key prefix,
#       '1' if the job starts a new session
# Returns action, attempt, detail, and how many earlier attempts ended without failing (handed back
# at shutdown, or paused for approval). A session stays owned by a job awaiting approval.
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
  + tonumber(redis.call('HGET', KEYS[1], 'continuations') or '0')
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2])
redis.call('HDEL', KEYS[1], 'wseq')
redis.call('HSETNX', KEYS[1], 'started_at', now_s)
redis.call('ZADD', KEYS[5], now_ms + tonumber(ARGV[3]), ARGV[1])
local kind = 'started'
if attempt > 1 then kind = 'restarted' end
if redis.call('HGET', KEYS[1], 'resumed_by') == 'approval' then
  kind = 'continued'
  redis.call('HDEL', KEYS[1], 'resumed_by')
end
local entry = cjson.encode({kind = 'job', type = kind, attempt = attempt, worker = ARGV[2]})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'd', entry)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'cancelled', attempt, '', handbacks} end
local owner = redis.call('GET', KEYS[4])
if owner and owner ~= ARGV[1] then
  local owner_status = redis.call('HGET', ARGV[6] .. owner, 'status')
  if owner_status == 'queued' or owner_status == 'running'
      or owner_status == 'awaiting_approval' then
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
    + _FENCE
    + _HAND_RESULT
    + """
if not runs(KEYS[1], ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result', ARGV[4], 'error', ARGV[5],
  'finished_at', now_s)
local entry = cjson.encode({kind = 'job', type = 'finished', status = ARGV[3]})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'd', entry)
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
redis.call('DEL', KEYS[5])
hand_result(KEYS[1], KEYS[2], ARGV[1], ARGV[4], ARGV[8], ARGV[6])
return 1
"""
)

# Cancel a job (queued, running or awaiting approval), or (mode 'reject') fail a job that was never
# started because its payload was bad.
# KEYS: job, events, cancel flag, cancels stream, leases
# ARGV: job_id, retention_s, events maxlen, result json, event entry json,
#       done key prefix, session key prefix, mode ('cancel' or 'reject'), error text, approvals key
CANCEL = (
    _NOW
    + _HAND_RESULT
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if status == 'running' and ARGV[8] == 'cancel' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'd', cjson.encode({job_id = ARGV[1]}))
  redis.call('EXPIRE', KEYS[4], ARGV[2])
  return 'requested'
end
if status ~= 'queued' and status ~= 'awaiting_approval' then return 'finished' end
if status == 'awaiting_approval' and ARGV[8] ~= 'cancel' then return 'finished' end
redis.call('ZREM', ARGV[10], ARGV[1])
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
hand_result(KEYS[1], KEYS[2], ARGV[1], ARGV[4], ARGV[6], ARGV[2])
return final
"""
)

# KEYS: leases. ARGV: job key prefix, lease_ms, then job id / attempt pairs.
# Renews the jobs this worker still owns; returns job id / attempt of each attempt it no longer
# owns (taken over), flattened: one worker may run a stale and the current attempt of a job.
RENEW = (
    _NOW
    + _FENCE
    + """
local lost = {}
for i = 3, #ARGV, 2 do
  local owned, status = runs(ARGV[1] .. ARGV[i], ARGV[i + 1])
  if owned then
    redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[i])
  elseif status == 'running' or status == 'queued' then
    table.insert(lost, ARGV[i])
    table.insert(lost, ARGV[i + 1])
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
    + _FENCE
    + """
local out = {}
for i = 5, #ARGV, 2 do
  local job, attempt = ARGV[i], ARGV[i + 1]
  local key = ARGV[1] .. job
  if runs(key, attempt) then
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
FENCED_WRITES = (
    _FENCE
    + """
local refused = {}
local i, group = 1, 0
while i <= #ARGV do
  group = group + 1
  local job = KEYS[tonumber(ARGV[i])]
  local owned = runs(job, ARGV[i + 1])
  local applied = tonumber(redis.call('HGET', job, 'wseq') or '0') or 0
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
)

# Approvals (docs/approvals.md). A job whose tool calls need a person's decision is parked as
# ``awaiting_approval``: ``pending_approvals`` (JSON list of call id, tool name, arguments, written
# by the runner) and ``approval_decisions`` (JSON object call id -> {decision, reason}, written
# here). Once every pending call is decided the job is queued again (a new attempt of the same
# job), with a grace lease so the sweeper re-sends it if the sender dies before sending.
_APPROVALS = """
local function pending_ids(key)
  local ids = {}
  for _, call in ipairs(cjson.decode(redis.call('HGET', key, 'pending_approvals') or '[]')) do
    ids[call.call_id] = true
  end
  return ids
end
local function decisions_of(key)
  local raw = redis.call('HGET', key, 'approval_decisions')
  if not raw or raw == '' then return {} end
  return cjson.decode(raw)
end
local function undecided(ids, decisions)
  local left = 0
  for id, _ in pairs(ids) do
    if decisions[id] == nil then left = left + 1 end
  end
  return left
end
local function deny_undecided(ids, decisions, reason)
  for id, _ in pairs(ids) do
    if decisions[id] == nil then decisions[id] = {decision = 'denied', reason = reason} end
  end
end
local function requeue(key, job_id, leases, approvals, grace_ms, retention, maxlen, decisions)
  redis.call('HSET', key, 'status', 'queued', 'resumed_by', 'approval',
    'approval_decisions', cjson.encode(decisions))
  redis.call('HDEL', key, 'finished_at')
  redis.call('HINCRBY', key, 'continuations', 1)
  redis.call('ZREM', approvals, job_id)
  redis.call('ZADD', leases, now_ms + tonumber(grace_ms), job_id)
  local entry = cjson.encode({kind = 'job', type = 'approval_decided'})
  redis.call('XADD', key .. ':events', 'MAXLEN', '~', maxlen, '*', 'd', entry)
  redis.call('EXPIRE', key, retention)
  return {job_id, redis.call('HGET', key, 'spec') or '', redis.call('HGET', key, 'attempt') or '0'}
end
"""

# Park a running job as awaiting approval (fenced by its attempt, like FINISH); the dispatcher's
# fan-in gets its result, so ``gather`` does not wait for a person.
# KEYS: job, events, leases, approvals, cancel flag
# ARGV: job_id, attempt, result json, error, retention_s, events maxlen, done key prefix,
#       pending calls json, approval ttl_s
AWAIT_APPROVAL = (
    _NOW
    + _FENCE
    + _HAND_RESULT
    + """
if not runs(KEYS[1], ARGV[2]) then return 0 end
local deadline_ms = now_ms + tonumber(ARGV[9]) * 1000
redis.call('HSET', KEYS[1], 'status', 'awaiting_approval', 'result', ARGV[3], 'error', ARGV[4],
  'finished_at', now_s, 'pending_approvals', ARGV[8],
  'approval_deadline', string.format('%.3f', deadline_ms / 1000))
redis.call('HDEL', KEYS[1], 'approval_decisions')
local entry = cjson.encode({kind = 'job', type = 'awaiting_approval', attempt = tonumber(ARGV[2])})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'd', entry)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], deadline_ms, ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[5])
redis.call('DEL', KEYS[5])
hand_result(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[7], ARGV[5])
return 1
"""
)

# Decide some (or all undecided) pending calls of one job, atomically: refused whole if the job
# is not awaiting approval, or a call id is not pending or already decided.
# KEYS: job, leases, approvals
# ARGV: job_id, decision ('approved' or 'denied'), call ids json list ('*' = every undecided),
#       reason, grace ms, retention_s, events maxlen
# Returns {'queued', job id, spec json, attempt}, {'waiting', undecided count} or
# {refusal, detail} with refusal 'not_found', 'not_awaiting', 'unknown_call', 'already_decided'.
DECIDE = (
    _NOW
    + _APPROVALS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'not_found', ''} end
if status ~= 'awaiting_approval' then return {'not_awaiting', status} end
local ids = pending_ids(KEYS[1])
local decisions = decisions_of(KEYS[1])
local chosen = {}
if ARGV[3] == '*' then
  for id, _ in pairs(ids) do
    if decisions[id] == nil then table.insert(chosen, id) end
  end
else
  chosen = cjson.decode(ARGV[3])
end
for _, id in ipairs(chosen) do
  if not ids[id] then return {'unknown_call', id} end
  if decisions[id] ~= nil then return {'already_decided', id .. ' ' .. decisions[id].decision} end
end
for _, id in ipairs(chosen) do
  local decision = {decision = ARGV[2]}
  if ARGV[2] == 'denied' then decision.reason = ARGV[4] end
  decisions[id] = decision
end
local left = undecided(ids, decisions)
if left > 0 then
  redis.call('HSET', KEYS[1], 'approval_decisions', cjson.encode(decisions))
  return {'waiting', tostring(left)}
end
local out = requeue(KEYS[1], ARGV[1], KEYS[2], KEYS[3], ARGV[5], ARGV[6], ARGV[7], decisions)
return {'queued', out[1], out[2], out[3]}
"""
)

# Deny, as expired, every undecided call of the jobs whose approval deadline passed, and queue
# them again (the model reads the reason and goes on). Stale members are dropped.
# KEYS: approvals, leases. ARGV: job key prefix, grace ms, retention_s, events maxlen, reason,
#       max jobs. Returns job id, spec json and attempt for each, flattened.
EXPIRE_APPROVALS = (
    _NOW
    + _APPROVALS
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, ARGV[6])
local out = {}
for _, job in ipairs(due) do
  local key = ARGV[1] .. job
  if redis.call('HGET', key, 'status') == 'awaiting_approval' then
    local decisions = decisions_of(key)
    deny_undecided(pending_ids(key), decisions, ARGV[5])
    local item = requeue(key, job, KEYS[2], KEYS[1], ARGV[2], ARGV[3], ARGV[4], decisions)
    for _, value in ipairs(item) do table.insert(out, value) end
  else
    redis.call('ZREM', KEYS[1], job)
  end
end
return out
"""
)

# KEYS: job, leases, jobs index, session owner.
# ARGV: job_id, attempt, worker, lease_ms, retention_s, submitted_at, then hash field / value
# pairs (the submitted job's fields). Re-creates the record of a job this worker is running
# when Redis lost it (a restart without persistence). Returns 2 if it did, 1 if the record exists
# and says this attempt runs the job (re-created already), 0 if another attempt owns it.
RESTORE_RUNNING = (
    _NOW
    + _FENCE
    + """
if redis.call('HEXISTS', KEYS[1], 'spec') == 1 then
  if runs(KEYS[1], ARGV[2]) then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('HSET', KEYS[1], 'status', 'running', 'attempt', ARGV[2], 'worker', ARGV[3])
redis.call('HSETNX', KEYS[1], 'started_at', now_s)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[5])
return 2
"""
)

# Reserve one model call's estimate in every budget scope of a job, or in none (a refusal).
# KEYS: budgets index. ARGV: budget key prefix, estimate usd, estimate tokens, retention_s, then
# five values per scope: scope, max usd, max tokens, window s ('' = none), own ('1': the limits
# travel with the job and are recorded; '0': use the stored budget, if the scope has one).
# Returns {'ok', counter keys...} or {'over', scope, refusal json}. A refusal marks the scope's
# window exhausted, so every later reservation in it is refused too.
RESERVE = (
    _NOW
    + """
local est_usd, est_tok, retention = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local chosen = {}
for i = 5, #ARGV, 5 do
  local scope, def = ARGV[i], ARGV[1] .. ARGV[i]
  local max_usd, max_tok, window = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local known = true
  if ARGV[i + 4] == '1' then
    if redis.call('EXISTS', def) == 0 then
      redis.call('HSET', def, 'max_cost_usd', max_usd, 'max_tokens', max_tok, 'window_s', window)
      redis.call('EXPIRE', def, retention)
    end
  else
    local stored = redis.call('HMGET', def, 'max_cost_usd', 'max_tokens', 'window_s')
    known = stored[1] ~= false or stored[2] ~= false
    max_usd, max_tok, window = stored[1] or '', stored[2] or '', stored[3] or ''
  end
  if known then
    local counter, ttl = def .. '@all', retention
    if window ~= '' then
      counter = def .. '@' .. math.floor(now_ms / 1000 / tonumber(window))
      ttl = math.max(retention, 2 * tonumber(window))
    end
    local c = redis.call('HMGET', counter, 'spent_usd', 'reserved_usd', 'spent_tokens',
      'reserved_tokens', 'exhausted')
    if c[5] then return {'over', scope, c[5]} end
    local spent_usd, held_usd = tonumber(c[1] or '0'), tonumber(c[2] or '0')
    local spent_tok, held_tok = tonumber(c[3] or '0'), tonumber(c[4] or '0')
    local refusal = nil
    if max_usd ~= '' and spent_usd + held_usd + est_usd > tonumber(max_usd) then
      refusal = {kind = 'usd', limit = tonumber(max_usd), spent = spent_usd,
        reserved = held_usd, need = est_usd}
    elseif max_tok ~= '' and spent_tok + held_tok + est_tok > tonumber(max_tok) then
      refusal = {kind = 'tokens', limit = tonumber(max_tok), spent = spent_tok,
        reserved = held_tok, need = est_tok}
    end
    if refusal then
      local encoded = cjson.encode(refusal)
      redis.call('HSET', counter, 'exhausted', encoded)
      redis.call('EXPIRE', counter, ttl)
      return {'over', scope, encoded}
    end
    table.insert(chosen, {counter, ttl, scope})
  end
end
local out = {'ok'}
for _, item in ipairs(chosen) do
  redis.call('HINCRBYFLOAT', item[1], 'reserved_usd', est_usd)
  redis.call('HINCRBY', item[1], 'reserved_tokens', est_tok)
  redis.call('EXPIRE', item[1], item[2])
  redis.call('ZADD', KEYS[1], now_ms, item[3])
  table.insert(out, item[1])
end
redis.call('EXPIRE', KEYS[1], retention)
return out
"""
)

# Settle a reservation: release the estimate, add the real use. Counters that expired meanwhile
# are not brought back. KEYS: the counters the reservation named.
# ARGV: estimate usd, estimate tokens, spent usd, spent tokens.
SETTLE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'reserved_usd', -tonumber(ARGV[1]))
    redis.call('HINCRBY', KEYS[i], 'reserved_tokens', -tonumber(ARGV[2]))
    redis.call('HINCRBYFLOAT', KEYS[i], 'spent_usd', ARGV[3])
    redis.call('HINCRBY', KEYS[i], 'spent_tokens', ARGV[4])
  end
end
return #KEYS
"""

# Admit one model call into every rate-limit bucket it belongs to, or into none.
# KEYS: per bucket its log (sorted set of 'id:tokens' by admission ms) and its state hash
# ('held' tokens in the log, 'paused_until' ms). ARGV: tokens, call id, then three values per
# bucket: max requests ('' = none), max tokens ('' = none), span ms (window + guard).
# Returns {wait ms, paused}: {0, 0} when admitted, else how long until it could be.
RATE_ACQUIRE = (
    _NOW
    + """
local tokens = tonumber(ARGV[1])
local wait, paused = 0, 0
local function used(member) return tonumber(string.match(member, ':(%d+)$')) end
for b = 1, #KEYS / 2 do
  local log, state = KEYS[2 * b - 1], KEYS[2 * b]
  local a = 3 + (b - 1) * 3
  local max_req, max_tok, span = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local until_ms = tonumber(redis.call('HGET', state, 'paused_until') or '0')
  if until_ms > now_ms then
    wait, paused = math.max(wait, until_ms - now_ms), 1
  end
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now_ms - span)
  if #old > 0 then
    local freed = 0
    for _, member in ipairs(old) do freed = freed + used(member) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now_ms - span)
    redis.call('HINCRBY', state, 'held', -freed)
  end
  if redis.call('EXISTS', log) == 0 then redis.call('HSET', state, 'held', 0) end
  if max_req ~= '' then
    local n, limit = redis.call('ZCARD', log), tonumber(max_req)
    if n >= limit then
      local oldest = redis.call('ZRANGE', log, n - limit, n - limit, 'WITHSCORES')
      wait = math.max(wait, tonumber(oldest[2]) + span - now_ms)
    end
  end
  if max_tok ~= '' then
    local held, limit = tonumber(redis.call('HGET', state, 'held') or '0'), tonumber(max_tok)
    if held > 0 and held + tokens > limit then
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      for i = 1, #entries, 2 do
        if held + tokens <= limit then break end
        held = held - used(entries[i])
        wait = math.max(wait, tonumber(entries[i + 1]) + span - now_ms)
      end
    end
  end
end
if wait > 0 then return {wait, paused} end
for b = 1, #KEYS / 2 do
  local span = tonumber(ARGV[3 + (b - 1) * 3 + 2])
  redis.call('ZADD', KEYS[2 * b - 1], now_ms, ARGV[2] .. ':' .. ARGV[1])
  redis.call('HINCRBY', KEYS[2 * b], 'held', tokens)
  redis.call('PEXPIRE', KEYS[2 * b - 1], span + 1000)
  if redis.call('PTTL', KEYS[2 * b]) < span + 1000 then
    redis.call('PEXPIRE', KEYS[2 * b], span + 1000)
  end
end
return {0, 0}
"""
)

# Pause rate-limit buckets (a 429 with Retry-After): nobody is admitted until then.
# KEYS: the buckets' state hashes. ARGV: pause ms.
RATE_PAUSE = (
    _NOW
    + """
local until_ms = now_ms + tonumber(ARGV[1])
for i = 1, #KEYS do
  local current = tonumber(redis.call('HGET', KEYS[i], 'paused_until') or '0')
  if until_ms > current then redis.call('HSET', KEYS[i], 'paused_until', until_ms) end
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) + 1000 then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]) + 1000)
  end
end
return until_ms
"""
)
