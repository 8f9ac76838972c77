"""Key names and Lua scripts of the Redis replay backend (sidecar/replay/redis.py).

Each script is one atomic step on one run's keys; the comments say what goes
in (KEYS, ARGV) and what comes out.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.rediskeys import key_part, session_tag

# KEYS: stream, index, pointer. ARGV: run, ttl_ms, max_events, max_bytes, then
# seq, event id, data, terminal (0/1) per entry. Entries at or below the last
# appended seq are skipped, so a retried append (reply lost) is harmless.
# Evicts oldest first while over either cap, never the newest entry (it may be
# the terminal event); returns how many went.
APPEND = """
local stream, index = KEYS[1], KEYS[2]
local run = ARGV[1]
local max_events, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', index, 'last') or '0')
local added = 0
for i = 5, #ARGV, 4 do
  local seq, id, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if tonumber(seq) > last then
    redis.call('XADD', stream, '0-' .. seq, 'i', id, 'd', data, 't', ARGV[i + 3])
    if id == run .. '-' .. seq then
      redis.call('HDEL', index, 'id:' .. id)  -- the newest entry with an id wins, as in memory
    elseif id ~= '' then  -- '' is a keepalive: nobody resumes from it
      redis.call('HSET', index, 'id:' .. id, seq)
    end
    added = added + #data
    last = tonumber(seq)
  end
end
local bytes = tonumber(redis.call('HGET', index, 'bytes') or '0') + added
local len = redis.call('XLEN', stream)
local evicted, gone = 0, nil
while len > 1 and (len > max_events or bytes > max_bytes) do
  local batch = redis.call('XRANGE', stream, gone and ('(' .. gone[1]) or '-', '+', 'COUNT', 64)
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    if not (len > 1 and (len > max_events or bytes > max_bytes)) then break end
    local f = e[2]  -- i, id, d, data, t, flag: the order XADD wrote them
    local seq = string.sub(e[1], 3)
    bytes = bytes - #f[4]
    len = len - 1
    evicted = evicted + 1
    if redis.call('HGET', index, 'id:' .. f[2]) == seq then
      redis.call('HDEL', index, 'id:' .. f[2])
    end
    gone = {e[1], f[2], seq}
  end
end
if gone then
  redis.call('XTRIM', stream, 'MINID', '0-' .. string.format('%.0f', tonumber(gone[3]) + 1))
  redis.call('HSET', index, 'bid', gone[2], 'bseq', gone[3])
end
redis.call('HSET', index, 'bytes', bytes, 'last', string.format('%.0f', last))
redis.call('PEXPIRE', stream, ARGV[2])
redis.call('PEXPIRE', index, ARGV[2])
if redis.call('GET', KEYS[3]) == run then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
return evicted
"""

# KEYS: stream, index. ARGV: event id, its seq if it has the sidecar's form, else ''.
# The entries after the id, or false when it is unknown or what follows it was
# evicted. Resolution as in memory: a held entry's id, else the boundary's.
AFTER = """
local stream, index = KEYS[1], KEYS[2]
if ARGV[1] == '' then return false end  -- a keepalive's: never a place to resume from
local seq = redis.call('HGET', index, 'id:' .. ARGV[1])
if not seq and ARGV[2] ~= '' then
  local e = redis.call('XRANGE', stream, '0-' .. ARGV[2], '0-' .. ARGV[2])[1]
  if e and e[2][2] == ARGV[1] then seq = ARGV[2] end
end
if not seq then
  local b = redis.call('HMGET', index, 'bid', 'bseq')
  if b[1] == ARGV[1] then seq = b[2] end
end
if not seq then return false end
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
if not first or tonumber(seq) < tonumber(string.sub(first[1], 3)) - 1 then return false end
return redis.call('XRANGE', stream, '(0-' .. seq, '+')
"""

# KEYS: stream, index, pointer, live. ARGV: run, retention_ms.
FINISH = """
redis.call('HSET', KEYS[2], 'finished', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
redis.call('DEL', KEYS[4])
return 1
"""

# KEYS: pointer, stream, index, follow, live. ARGV: run, ttl_ms, max_events,
# max_bytes, binding, lease_ms, then the key prefixes of this session's runs
# (stream, index, follow, live) that the previous run's id completes. Refuses
# (returns 0) while the previous run is live (its owner's liveness key is
# there) and bound to other credentials; else drops the previous log (as
# memory does) and starts an empty one, live for a lease.
OPEN = """
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[1] then
  local held = redis.call('HMGET', ARGV[8] .. old, 'bind', 'finished')
  local live = redis.call('EXISTS', ARGV[10] .. old) == 1
  if live and not held[2] and held[1] and held[1] ~= ARGV[5] then return 0 end
  redis.call('DEL', ARGV[7] .. old, ARGV[8] .. old, ARGV[9] .. old, ARGV[10] .. old)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[3], 'max_events', ARGV[3], 'max_bytes', ARGV[4], 'bind', ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('SET', KEYS[5], '1', 'PX', ARGV[6])
return 1
"""

# KEYS: stream, index, follow, pointer, live. ARGV: run.
DROP = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Keys:
    stream: str
    index: str
    follow: str
    #: Exists while the run's process is alive (renewed every lease/3).
    live: str
    pointer: str

    @classmethod
    def of(cls, prefix: str, route: str, key: str, run_id: str) -> Keys:
        stream, index, follow, live = run_prefixes(prefix, route, key)
        run = key_part(run_id)
        return cls(
            stream=stream + run,
            index=index + run,
            follow=follow + run,
            live=live + run,
            pointer=pointer_key(prefix, route, key),
        )


def run_prefixes(prefix: str, route: str, key: str) -> tuple[str, str, str, str]:
    """The names of a session's run keys (stream, index, follow, live) but for the run id."""
    session = session_tag(route, key) + ":"
    return (
        f"{prefix}replay:{session}",
        f"{prefix}replay-index:{session}",
        f"{prefix}replay-follow:{session}",
        f"{prefix}replay-live:{session}",
    )


def pointer_key(prefix: str, route: str, key: str) -> str:
    return f"{prefix}replay-run:{session_tag(route, key)}"
