"""Resume buffers in Redis Streams, so a reconnect can land on any replica.

Strategy: one stream per run, ``{prefix}replay:{route}:{key}:{run}``, whose
entry ids are ``0-{seq}``, so "after seq n" is the stream id ``0-n``. A pointer
``{prefix}replay-run:{route}:{key}`` names the session's current run. The
run's index hash ``{prefix}replay-index:…`` holds the byte count, the caps,
the finished flag, the *boundary* (the newest evicted entry, as in
:mod:`sidecar.replay.memory`) and the seq of every event id the upstream chose;
the sidecar's own ids (``{run}-{seq}``, :class:`~sidecar.normalize.IdSource`)
carry their seq and are checked against the entry instead; keepalives (id "")
are never a place to resume from. Appends, trims and look-ups are Lua
scripts, so caps are exact (count and bytes, like memory) and no reader sees
half an append. Every key expires: live runs after ``live_ttl`` without an
append, finished ones after their retention. Redis errors become
:class:`~sidecar.errors.BackendUnavailable` within about a second. A follower
waits in ``XREAD BLOCK`` on a second client without a socket timeout: one
pooled connection per waiting follower of this process.

Memory has a global cap across logs; here that is Redis's own ``maxmemory``
(every key has a TTL, so a ``volatile-*`` policy applies to all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sidecar.errors import BackendUnavailable, SessionForbidden
from sidecar.rediskeys import key_part
from sidecar.replay.base import FORBIDDEN, Entry

#: Socket connect/read timeout of one operation: an outage shows within about this.
OP_TIMEOUT = 1.0
_BUDGET = OP_TIMEOUT + 0.5  # backstop around one operation, its one retry included
#: A live run's keys expire this long after its last append (a crashed replica's
#: runs go away). Must exceed the routes' ``limits.idle_timeout``.
LIVE_TTL = 3600.0
#: The longest single ``XREAD BLOCK``; longer waits loop, checking ``finished``.
_MAX_BLOCK = 5.0
_DEFAULT_CAPS = (1000, 4 * 1024 * 1024)  # caps of a found log whose index is gone

# KEYS: stream, index, pointer. ARGV: run, ttl_ms, max_events, max_bytes, then
# seq, event id, data, terminal (0/1) per entry. Entries at or below the last
# appended seq are skipped, so a retried append (reply lost) is harmless.
# Evicts oldest first while over either cap, never the newest entry (it may be
# the terminal event); returns how many went.
_APPEND = """
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
_AFTER = """
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

# KEYS: stream, index, pointer. ARGV: run, retention_ms.
_FINISH = """
redis.call('HSET', KEYS[2], 'finished', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
return 1
"""

# KEYS: pointer, stream, index, follow. ARGV: run, ttl_ms, max_events,
# max_bytes, binding, then the key prefixes of this session's runs (stream,
# index, follow) that the previous run's id completes. Refuses (returns 0)
# while the previous run is live and bound to other credentials; else drops
# the previous log (as memory does) and starts an empty one.
_OPEN = """
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[1] then
  local held = redis.call('HMGET', ARGV[7] .. old, 'bind', 'finished')
  if not held[2] and held[1] and held[1] ~= ARGV[5] then return 0 end
  redis.call('DEL', ARGV[6] .. old, ARGV[7] .. old, ARGV[8] .. old)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[3], 'max_events', ARGV[3], 'max_bytes', ARGV[4], 'bind', ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""

# KEYS: stream, index, follow, pointer. ARGV: run.
_DROP = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _own_seq(run_id: str, event_id: str) -> str:
    """The seq of an id in the sidecar's form ``{run}-{seq}``, else ''."""
    head, sep, tail = event_id.rpartition("-")
    if sep and head == run_id and tail.isascii() and tail.isdigit() and str(int(tail)) == tail:
        return tail
    return ""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(raw_id: bytes, fields: Mapping[bytes, bytes] | Sequence[bytes]) -> Entry:
    if not isinstance(fields, Mapping):  # a script's reply: a flat field list
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    seq = int(raw_id.split(b"-", 1)[1])
    return Entry(seq, fields[b"i"].decode(), fields[b"d"], fields[b"t"] == b"1")


def _entries(raw: Sequence[Any]) -> list[Entry]:
    return [_entry(raw_id, fields) for raw_id, fields in raw]


@dataclass(frozen=True, slots=True)
class _Keys:
    stream: str
    index: str
    follow: str
    pointer: str

    @classmethod
    def of(cls, prefix: str, route: str, key: str, run_id: str) -> _Keys:
        stream, index, follow = _run_prefixes(prefix, route, key)
        run = key_part(run_id)
        return cls(
            stream=stream + run,
            index=index + run,
            follow=follow + run,
            pointer=pointer_key(prefix, route, key),
        )


def _run_prefixes(prefix: str, route: str, key: str) -> tuple[str, str, str]:
    """The names of a session's run keys (stream, index, follow) but for the run id."""
    session = f"{key_part(route)}:{key}:"
    return (
        f"{prefix}replay:{session}",
        f"{prefix}replay-index:{session}",
        f"{prefix}replay-follow:{session}",
    )


def pointer_key(prefix: str, route: str, key: str) -> str:
    return f"{prefix}replay-run:{key_part(route)}:{key}"


class RedisReplayLog:
    """The log of one run, as any process sees it."""

    def __init__(
        self,
        store: RedisReplayStore,
        keys: _Keys,
        run_id: str,
        caps: tuple[int, int] | None,
        binding: str,
    ) -> None:
        self._store = store
        self.keys = keys
        self._run_id = run_id
        self.binding = binding
        #: (max_events, max_bytes); None for a found log until it appends (it never does).
        self._caps = caps

    @property
    def run_id(self) -> str:
        return self._run_id

    async def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        max_events, max_bytes = self._caps or await self._stored_caps()
        store, k = self._store, self.keys
        args: list[str | bytes | int] = [self._run_id, _ms(store.live_ttl), max_events, max_bytes]
        for e in entries:
            args += [e.seq, e.event_id, e.data, int(e.terminal)]
        async with store.backend():
            await store.scripts["append"](keys=[k.stream, k.index, k.pointer], args=args)

    async def _stored_caps(self) -> tuple[int, int]:
        async with self._store.backend() as redis:
            raw = await redis.hmget(self.keys.index, ["max_events", "max_bytes"])
        if raw[0] is None or raw[1] is None:
            self._caps = _DEFAULT_CAPS
        else:
            self._caps = (int(raw[0]), int(raw[1]))
        return self._caps

    async def after(self, event_id: str) -> list[Entry] | None:
        k = self.keys
        args = [event_id, _own_seq(self._run_id, event_id)]
        async with self._store.backend():
            raw = await self._store.scripts["after"](keys=[k.stream, k.index], args=args)
        return None if raw is None else _entries(raw)

    async def last(self) -> Entry | None:
        async with self._store.backend() as redis:
            raw = await redis.xrevrange(self.keys.stream, count=1)
        return _entries(raw)[0] if raw else None

    async def read(self, after_seq: int, block: float | None) -> list[Entry]:
        loop = asyncio.get_running_loop()
        deadline = None if block is None else loop.time() + block
        while True:
            entries, finished = await self._poll(after_seq)
            wait = _MAX_BLOCK if deadline is None else min(deadline - loop.time(), _MAX_BLOCK)
            if entries or finished or wait <= 0:
                return entries
            # XREAD returns at once if entries came since the poll: no lost wakeup.
            entries = await self._store.xread(self.keys.stream, after_seq, wait)
            if entries:
                return entries

    async def _poll(self, after_seq: int) -> tuple[list[Entry], bool]:
        async with self._store.backend() as redis, redis.pipeline(transaction=False) as pipe:
            pipe.xrange(self.keys.stream, f"(0-{after_seq}", "+")
            pipe.hget(self.keys.index, "finished")
            raw, finished = await pipe.execute()
        return _entries(raw), finished is not None

    async def finish(self, retention: float) -> None:
        k = self.keys
        # PEXPIRE 0 deletes at once, as a retention of 0 means.
        args: list[str | int] = [self._run_id, max(0, round(retention * 1000))]
        async with self._store.backend():
            await self._store.scripts["finish"](keys=[k.stream, k.index, k.pointer], args=args)

    async def follow(self, ttl: float) -> None:
        async with self._store.backend() as redis:
            await redis.set(self.keys.follow, b"1", px=_ms(ttl))

    async def followed(self) -> bool:
        async with self._store.backend() as redis:
            return bool(await redis.exists(self.keys.follow))


class RedisReplayStore:
    kind = "redis"

    def __init__(
        self, url: str, *, prefix: str = "sse-sidecar:", live_ttl: float = LIVE_TTL
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.live_ttl = live_ttl
        self._redis: Redis | None = None
        #: Blocking reads only: no socket timeout (the wait is bounded around the call).
        self._blocking: Redis | None = None
        self.scripts: dict[str, AsyncScript] = {}

    async def start(self) -> None:
        """Make the clients; they connect on first use, so a Redis that is down is no error."""
        if self._redis is not None:
            return
        # One immediate retry on a dropped connection (a pooled socket from
        # before a Redis restart), none on timeouts.
        common: dict[str, Any] = {
            "socket_connect_timeout": OP_TIMEOUT,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        self._redis = redis = Redis.from_url(self.url, socket_timeout=OP_TIMEOUT, **common)
        self._blocking = Redis.from_url(self.url, socket_timeout=None, **common)
        scripts = {
            "append": _APPEND,
            "after": _AFTER,
            "finish": _FINISH,
            "drop": _DROP,
            "open": _OPEN,
        }
        self.scripts = {name: redis.register_script(src) for name, src in scripts.items()}

    async def close(self) -> None:
        clients = (self._redis, self._blocking)
        self._redis = self._blocking = None
        for client in clients:
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    @contextlib.asynccontextmanager
    async def backend(self, budget: float = _BUDGET) -> AsyncIterator[Redis]:
        """The client, with Redis errors and slowness turned into BackendUnavailable."""
        redis = self._redis
        if redis is None:
            raise BackendUnavailable("the replay backend (redis) is not running")
        try:
            async with asyncio.timeout(budget):
                yield redis
        except (RedisError, OSError) as exc:  # OSError covers the budget's TimeoutError
            # The type only: Redis's messages name internal addresses; the cause keeps them.
            what = type(exc).__name__
            raise BackendUnavailable(
                f"the replay backend (redis) cannot be reached ({what}); retry shortly"
            ) from exc

    async def xread(self, stream: str, after_seq: int, wait: float) -> list[Entry]:
        """Entries after ``after_seq``, waiting up to ``wait`` seconds on a connection of its own.

        A blocked XREAD holds its pooled connection; when it is cancelled
        (the follower's client left) redis-py disconnects that connection
        rather than return it with a reply still due.
        """
        blocking = self._blocking
        if blocking is None:
            raise BackendUnavailable("the replay backend (redis) is not running")
        async with self.backend(wait + _BUDGET):
            got: Any = await blocking.xread({stream: f"0-{after_seq}"}, block=_ms(wait))
        return _entries(got[0][1]) if got else []  # RESP2: [[stream, entries]]

    def _keys(self, route: str, key: str, run_id: str) -> _Keys:
        return _Keys.of(self.prefix, route, key, run_id)

    async def open(
        self, route: str, key: str, run_id: str, max_events: int, max_bytes: int, binding: str = ""
    ) -> RedisReplayLog:
        keys = self._keys(route, key, run_id)
        # The previous run's log goes now, as in memory. Its run, if it still
        # appends (to end with error/replaced), writes a short-lived stream
        # its own followers can still read.
        args: list[str | int] = [run_id, _ms(self.live_ttl), max_events, max_bytes, binding]
        args += _run_prefixes(self.prefix, route, key)
        async with self.backend():
            opened = await self.scripts["open"](
                keys=[keys.pointer, keys.stream, keys.index, keys.follow], args=args
            )
        if not opened:
            raise SessionForbidden(FORBIDDEN)
        return RedisReplayLog(self, keys, run_id, (max_events, max_bytes), binding)

    async def find(self, route: str, key: str) -> RedisReplayLog | None:
        async with self.backend() as redis:
            run = await redis.get(pointer_key(self.prefix, route, key))
            if run is None:
                return None
            run_id = _text(run)
            keys = self._keys(route, key, run_id)
            # A log without a binding (its index expired) matches no credentials but none.
            binding = await redis.hget(keys.index, "bind")
        return RedisReplayLog(self, keys, run_id, None, "" if binding is None else _text(binding))

    async def drop(self, log: object) -> None:
        if not isinstance(log, RedisReplayLog):
            return
        k = log.keys
        async with self.backend():
            await self.scripts["drop"](
                keys=[k.stream, k.index, k.follow, k.pointer], args=[log.run_id]
            )
