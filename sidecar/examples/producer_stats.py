"""What the example producer saw, for the proxy's tests: its streams, runs and resumes."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from multidict import CIMultiDictProxy

Outcome = Literal["active", "finished", "client_gone"]
RECORDS_KEPT = 1000


@dataclass(slots=True)
class StreamRecord:
    """One stream request as the producer received it, and how it ended."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes
    mode: str
    outcome: Outcome = "active"
    #: A resume request: the run asked for and the position it asked after.
    resume_of: tuple[str, int] | None = None


@dataclass(slots=True)
class ProducerStats:
    """What the producer saw: stream requests started, finished, and left by their client.

    ``finished`` counts streams the producer ended itself (including ``crash``
    and ``error500``); ``client_gone`` counts streams whose connection went
    away before that (client disconnect, or the handler was cancelled); a
    resumable run counts as one stream, ended when its answer is (or when no
    connection read it for RUN_KEEP). ``resumed`` counts requests that
    resumed a run it had, ``resume_misses`` those for a run it no longer had.
    """

    started: int = 0
    finished: int = 0
    client_gone: int = 0
    resumed: int = 0
    resume_misses: int = 0
    records: deque[StreamRecord] = field(default_factory=lambda: deque(maxlen=RECORDS_KEPT))
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def active(self) -> int:
        return self.started - self.finished - self.client_gone

    def as_json(self) -> dict[str, int]:
        return {
            "started": self.started,
            "finished": self.finished,
            "client_gone": self.client_gone,
            "active": self.active,
            "resumed": self.resumed,
            "resume_misses": self.resume_misses,
        }

    async def wait_until(self, predicate: Callable[[ProducerStats], bool]) -> None:
        """Return once ``predicate(self)`` holds; bound it with ``asyncio.timeout``."""
        while not predicate(self):
            await self._changed.wait()

    def _begin(self, record: StreamRecord) -> None:
        self.started += 1
        self.records.append(record)
        self._notify()

    def resume_request(self, record: StreamRecord, *, found: bool) -> None:
        if found:
            self.resumed += 1
        else:
            self.resume_misses += 1
        self.records.append(record)
        self._notify()

    def _end(self, record: StreamRecord, outcome: Outcome) -> None:
        record.outcome = outcome
        if outcome == "client_gone":
            self.client_gone += 1
        else:
            self.finished += 1
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter once; the next change needs a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()


STATS = web.AppKey("sse_sidecar_example_producer_stats", ProducerStats)
