"""The interface of resume buffers (memory, redis).

A *run* is one upstream request. Its events go into the run's *log* as
entries numbered 1, 2, 3… (``seq``), each with the event id the client sees.
A client that reconnects with ``Last-Event-ID`` is given the entries after
that id, then follows the log until its terminal entry. Logs are per
session: finding one takes the route and the session key, so an id alone
never reaches another session's events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

#: What a request that presents other credentials than the run's is told.
FORBIDDEN = "this session's stream belongs to other credentials"


class Entry(NamedTuple):
    """One entry of a run's log (a tuple: built once per event on the hot path)."""

    seq: int
    #: "" for a keepalive: followers write it, but no one resumes from it.
    event_id: str
    #: The encoded event as the client gets it, its ``id:`` line included.
    data: bytes
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Taken:
    """A run whose owner is gone, now this process's: its log goes on under a fresh owner token."""

    log: ReplayLog
    #: The run's upstream request as kept at its start (sidecar/upstream/resumption.py).
    kept: bytes
    #: Where the upstream stood at the last logged event (a run without one is not taken).
    cursor: bytes
    #: The seq of the newest entry logged; the run's next event is the one after.
    last_seq: int


#: Why a takeover did not happen: the run's owner is alive (or another replica
#: took it first) so follow it, or it cannot be taken over at all.
NotTaken = Literal["owned", "impossible"]


class ReplayLog(Protocol):
    """The log of one run."""

    @property
    def run_id(self) -> str: ...

    @property
    def binding(self) -> str:
        """The fingerprint of the credentials that started the run (sessions/binding.py)."""
        ...

    async def append(self, entries: Sequence[Entry]) -> None:
        """Add entries (seq strictly increasing); the oldest go past the caps."""
        ...

    def append_nowait(self, entries: Sequence[Entry]) -> None:
        """Append to the run's own log (from :meth:`ReplayStore.open`) without waiting.

        The run's events reach its local client beside the log, so adding
        them must not wait on the network: a Redis log holds them locally
        and sends them in the process's next append round.
        """
        ...

    def append_one(self, entry: Entry, seq: int, size: int) -> None:
        """``append_nowait`` of one entry, whose ``seq`` and ``len(data)`` the caller has.

        The steady event's, once per event of every resumable stream: no
        sequence around it, no fields read again (a named tuple's field is
        an attribute lookup each time).
        """
        ...

    async def after(self, event_id: str) -> list[Entry] | None:
        """Entries after ``event_id``; None when the id is unknown or evicted."""
        ...

    async def last(self) -> Entry | None:
        """The newest entry still held."""
        ...

    async def read(self, after_seq: int, block: float | None) -> list[Entry]:
        """Entries with seq > ``after_seq``, waiting up to ``block`` seconds for one (else [])."""
        ...

    async def finish(self, retention: float) -> None:
        """The run ended (its terminal entry is in): keep the log ``retention`` seconds."""
        ...

    async def follow(self, ttl: float) -> None:
        """Say a client follows this log (renewed by the follower; expires after ``ttl``)."""
        ...

    async def abandoned(self) -> bool:
        """Whether the run's process is gone without finishing it: nothing more will come."""
        ...

    async def followed(self) -> bool:
        """Whether a client on another process follows it (the run keeps going then)."""
        ...

    def keep_cursor(self, cursor: Callable[[], bytes]) -> None:
        """Store ``cursor()`` with the appends, for a takeover to resume from (Redis only)."""
        ...

    def when_fenced(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once if another process takes the run over (Redis only)."""
        ...


class ReplayStore(Protocol):
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def open(
        self, route: str, key: str, run_id: str, max_events: int, max_bytes: int,
        binding: str = "", kept: bytes = b"",
    ) -> ReplayLog:  # fmt: skip
        """A new, empty log for a run; it replaces the session's previous log.

        ``kept``: the run's upstream request, with which another process can
        take the run over if this one dies (b"": it cannot be).

        Raises :class:`~sidecar.errors.SessionForbidden` while the previous
        log's run is live and bound to other credentials: knowing a session
        key must not be enough to end another user's run.
        """
        ...

    async def find(self, route: str, key: str) -> ReplayLog | None:
        """The session's current log, live or finished within its retention."""
        ...

    async def drop(self, log: ReplayLog) -> None:
        """Forget a log now (a run abandoned by its client)."""
        ...

    async def take_over(self, log: ReplayLog) -> Taken | NotTaken:
        """Own the run of a found log whose owner is gone; exactly one caller wins."""
        ...
