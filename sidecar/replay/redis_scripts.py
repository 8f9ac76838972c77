"""Key names and Lua scripts of the Redis replay backend (sidecar/replay/redis.py).

Each script is one atomic step on one run's keys; the comments say what goes
in (KEYS, ARGV) and what comes out. Stream entries come back as log entries
through :func:`entries_of`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.rediskeys import key_part, session_tag
from sidecar.replay.base import Entry
from sidecar.sessions.redis_scripts import fence_key, owner_key

# One log's append, on its stream, index and pointer keys, from its record
# (:func:`append_record`): run, owner token ('' for a log that is not the
# run's own), max_events, max_bytes, resume cursor (empty for unchanged), then
# seq, event id, data and terminal (0/1) per entry. One argument per log, not
# four per entry and six more per log: a round's call packs ~14 arguments a
# log otherwise, which costs the sidecar more than the entries themselves.
# Entries at or below the last appended seq are skipped, so a retried append
# (reply lost) is harmless. Evicts oldest first while over either cap, never
# the newest entry (it may be the terminal event); returns how many went, or
# -1 when another owner holds the run (taken over): a fenced owner never
# writes again. A log whose index is gone (a newer run of the session replaced
# it) takes the append: the replaced run's own followers still read its end.
_APPEND_FUNCTION = """
local function append(stream, index, pointer, rec, ttl)
  local run, me, max_events, max_bytes, clen, pos =
    string.match(rec, '^([^\\n]*)\\n([^\\n]*)\\n(%d+)\\n(%d+)\\n(%d+)\\n()')
  clen = tonumber(clen)
  local held = redis.call('HMGET', index, 'gen', 'last', 'bytes')
  local owner = held[1]
  if me ~= '' and owner and owner ~= me then return -1 end
  if clen > 0 then redis.call('HSET', index, 'cur', string.sub(rec, pos, pos + clen - 1)) end
  pos = pos + clen
  max_events, max_bytes = tonumber(max_events), tonumber(max_bytes)
  local last = tonumber(held[2] or '0')
  local added = 0
  while pos <= #rec do
    local seq, ilen, dlen, flag, at = string.match(rec, '^(%d+) (%d+) (%d+) ([01])\\n()', pos)
    local id_end = at + tonumber(ilen)
    local id = string.sub(rec, at, id_end - 1)
    pos = id_end + tonumber(dlen)
    local data = string.sub(rec, id_end, pos - 1)
    if tonumber(seq) > last then
      redis.call('XADD', stream, '0-' .. seq, 'i', id, 'd', data, 't', flag)
      if id == run .. '-' .. seq then
        redis.call('HDEL', index, 'id:' .. id)  -- the newest entry with an id wins, as in memory
      elseif id ~= '' then  -- '' is a keepalive: nobody resumes from it
        redis.call('HSET', index, 'id:' .. id, seq)
      end
      added = added + #data
      last = tonumber(seq)
    end
  end
  local bytes = tonumber(held[3] or '0') + added
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
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', index, ttl)
  if redis.call('GET', pointer) == run then redis.call('PEXPIRE', pointer, ttl) end
  return evicted
end
"""

# KEYS: stream, index, pointer. ARGV: ttl_ms, the log's record.
APPEND = (
    _APPEND_FUNCTION
    + """
return append(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[1])
"""
)

# Many logs in one call (an append round's): each log's three keys in KEYS;
# ARGV: ttl_ms, then each log's record, in the order of the keys. One result
# per log, in order. On a cluster, one call's logs share a slot.
APPEND_MANY = (
    _APPEND_FUNCTION
    + """
local out = {}
for k = 1, #KEYS / 3 do
  out[k] = append(KEYS[3 * k - 2], KEYS[3 * k - 1], KEYS[3 * k], ARGV[k + 1], ARGV[1])
end
return out
"""
)


def append_head(run_id: str, owner: str, caps: tuple[int, int]) -> bytes:
    """What every append record of a log starts with (made once per log)."""
    return b"%b\n%b\n%d\n%d\n" % (run_id.encode(), owner.encode(), caps[0], caps[1])


def append_record(head: bytes, cursor: bytes, entries: Sequence[Entry]) -> bytes:
    """One log's argument of an append call: head, cursor and entries, as the script reads them."""
    if len(entries) == 1:  # a round's usual log: one format operation
        e = entries[0]
        event_id = e.event_id.encode()
        return b"%b%d\n%b%d %d %d %d\n%b%b" % (
            head, len(cursor), cursor, e.seq, len(event_id), len(e.data), e.terminal,
            event_id, e.data,
        )  # fmt: skip
    parts = [head, b"%d\n%b" % (len(cursor), cursor)]
    for e in entries:
        event_id = e.event_id.encode()
        parts.append(
            b"%d %d %d %d\n%b%b" % (e.seq, len(event_id), len(e.data), e.terminal, event_id, e.data)
        )
    return b"".join(parts)


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

# KEYS: stream, index. ARGV: seq. Whether the run finished (1/0), then the
# entries after seq: a follower's read, one script so a round carries many.
POLL = """
return {redis.call('HEXISTS', KEYS[2], 'finished'),
        redis.call('XRANGE', KEYS[1], '(0-' .. ARGV[1], '+')}
"""

# KEYS: stream, index, pointer, live. ARGV: run, retention_ms, owner token.
# Returns 0 (and changes nothing) when another owner holds the run.
FINISH = """
local owner = redis.call('HGET', KEYS[2], 'gen')
if owner and owner ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], 'finished', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
redis.call('DEL', KEYS[4])
return 1
"""

# KEYS: pointer, stream, index, follow, live. ARGV: run, ttl_ms, max_events,
# max_bytes, binding, lease_ms, then the key prefixes of this session's runs
# (stream, index, follow, live) that the previous run's id completes, then the
# kept request ('' when the run cannot be taken over). Refuses (returns 0)
# while the previous run is live (its owner's liveness key is there) and bound
# to other credentials; else drops the previous log (as memory does) and
# starts an empty one, live for a lease, owned under token 1.
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
redis.call('HSET', KEYS[3], 'max_events', ARGV[3], 'max_bytes', ARGV[4], 'bind', ARGV[5],
  'gen', '1')
if ARGV[11] ~= '' then redis.call('HSET', KEYS[3], 'req', ARGV[11]) end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('SET', KEYS[5], '1', 'PX', ARGV[6])
return 1
"""

# KEYS: stream, index, follow, pointer, live. ARGV: run, owner token ('' for any).
# Returns 0 (and drops nothing) when another owner holds the run.
DROP = """
local owner = redis.call('HGET', KEYS[2], 'gen')
if ARGV[2] ~= '' and owner and owner ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"""


# KEYS: index, live. ARGV: owner token, lease_ms. The owner's liveness, renewed
# every lease/3: 1, or -1 when another owner holds the run (then nothing is
# renewed). A key that lapsed while its owner stalled is set again, so a run
# nobody took over meanwhile is its owner's still; the takeover script's check
# of the same key makes the two exclusive.
LIVE = """
local owner = redis.call('HGET', KEYS[1], 'gen')
if not owner then return redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
if owner ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: stream, index, pointer, live, the session's owner and fence keys
# (sidecar/sessions/redis_scripts.py). ARGV: run, lease_ms, fence_ttl_ms.
# Takes over a run whose owner is gone: the session's current, unfinished run
# whose liveness key lapsed, with a kept request and a cursor. Returns -1 when
# it cannot be taken over (not the current run, its index gone, nothing to
# resume it with), 0 when its owner is alive or another replica took it first
# (follow it then), else {token, kept request, cursor, max_events, max_bytes,
# entries}: a fresh owner token and the log as it is. Atomic, so of replicas
# racing exactly one wins. The session's claim is the dead owner's (a run
# opens its log, moving the pointer, before it claims): it goes, and a fresh
# fencing token is drawn, so the taker's claim is free at once and the old
# owner's renewal of it fails even before that claim lands.
TAKEOVER = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
local h = redis.call('HMGET', KEYS[2], 'finished', 'gen', 'req', 'cur', 'max_events', 'max_bytes')
if not h[2] then return -1 end
if h[1] or redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if not h[3] or h[3] == '' or not h[4] or h[4] == '' then return -1 end
local token = redis.call('HINCRBY', KEYS[2], 'gen', 1)
redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
redis.call('DEL', KEYS[5])
redis.call('INCR', KEYS[6])
redis.call('PEXPIRE', KEYS[6], ARGV[3])
return {token, h[3], h[4], h[5], h[6], redis.call('XRANGE', KEYS[1], '-', '+')}
"""


@dataclass(frozen=True, slots=True)
class Keys:
    """A run's Redis keys, spelled out when a call needs one.

    A live run holds only strings it holds anyway (the session key, the run
    id), not seven key strings for the whole of its life.
    """

    prefix: str
    route: str
    key: str
    run_id: str

    @classmethod
    def of(cls, prefix: str, route: str, key: str, run_id: str) -> Keys:
        return cls(prefix, route, key, run_id)

    def _run_key(self, kind: str) -> str:
        return run_prefix(self.prefix, kind, self.route, self.key) + key_part(self.run_id)

    @property
    def stream(self) -> str:
        return self._run_key("replay")

    @property
    def index(self) -> str:
        return self._run_key("replay-index")

    @property
    def follow(self) -> str:
        return self._run_key("replay-follow")

    @property
    def live(self) -> str:
        """Exists while the run's process is alive (renewed every lease/3)."""
        return self._run_key("replay-live")

    @property
    def pointer(self) -> str:
        return pointer_key(self.prefix, self.route, self.key)

    @property
    def session(self) -> str:
        """The session's claim (the session store's key)."""
        return owner_key(self.prefix, self.route, self.key)

    @property
    def fence(self) -> str:
        """The session's fencing counter (the session store's key)."""
        return fence_key(self.prefix, self.route, self.key)


#: The kinds of a run's keys: its stream, index, follow mark and liveness key.
RUN_KINDS = ("replay", "replay-index", "replay-follow", "replay-live")


def run_prefix(prefix: str, kind: str, route: str, key: str) -> str:
    """The name of a session's run key of ``kind`` but for the run id."""
    return f"{prefix}{kind}:{session_tag(route, key)}:"


def run_prefixes(prefix: str, route: str, key: str) -> tuple[str, str, str, str]:
    """The names of a session's run keys (stream, index, follow, live) but for the run id."""
    stream, index, follow, live = (run_prefix(prefix, kind, route, key) for kind in RUN_KINDS)
    return stream, index, follow, live


def pointer_key(prefix: str, route: str, key: str) -> str:
    return f"{prefix}replay-run:{session_tag(route, key)}"


def entry_of(raw_id: bytes, fields: Mapping[bytes, bytes] | Sequence[bytes]) -> Entry:
    """A log entry from a stream entry (an ``XRANGE`` reply's, or a script's flat field list)."""
    if not isinstance(fields, Mapping):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    seq = int(raw_id.split(b"-", 1)[1])
    return Entry(seq, fields[b"i"].decode(), fields[b"d"], fields[b"t"] == b"1")


def entries_of(raw: Sequence[Any]) -> list[Entry]:
    return [entry_of(raw_id, fields) for raw_id, fields in raw]
