"""Lua scripts for leases: renew the leases of running jobs, and find jobs whose lease lapsed.

A lease is a job id's score in ``{p}leases``: its expiry in Redis server milliseconds.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

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
