"""Typed application state shared by the handlers of one sidecar process."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.config import Config
from sidecar.metrics import Metrics
from sidecar.replay.base import ReplayStore
from sidecar.sessions.base import SessionStore
from sidecar.timers import TimerWheel
from sidecar.upstream.gateway_runs import GatewayPool


class StreamHandle:
    """What the process knows of one live stream: enough to stop it from outside."""

    __slots__ = ("id", "route", "stop_code", "task")

    def __init__(self, stream_id: str, route: str, task: asyncio.Task[Any] | None = None) -> None:
        self.id = stream_id
        self.route = route
        #: The task running the stream; set before the task first runs.
        self.task: asyncio.Task[Any] | None = task
        self.stop_code: str | None = None

    def stop(self, code: str) -> None:
        """End the stream with ``error/<code>`` (shutdown, replaced), or quietly (abandoned)."""
        if self.stop_code is None and self.task is not None:
            self.stop_code = code
            self.task.cancel()


@dataclass
class Context:
    config: Config
    metrics: Metrics
    sessions: SessionStore
    replay: ReplayStore
    streams: set[StreamHandle] = field(default_factory=set)
    #: Heartbeat and limit deadlines of the streams on the callback path.
    timers: TimerWheel = field(default_factory=TimerWheel)
    #: Shared gateway connections (``websocket.profile: openclaw``), one per route.
    gateways: GatewayPool = field(default_factory=GatewayPool)
    draining: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    #: ``_tasks.discard``, bound once, and the (empty) context it runs in: a
    #: bound method made for each task, and the copy of the current context
    #: asyncio makes for each callback otherwise, would be held by the task
    #: for its life (every resumable run's, ~0.2 KiB).
    _forget: Callable[[asyncio.Task[Any]], None] = field(init=False, repr=False)
    _forget_in: contextvars.Context = field(default_factory=contextvars.Context, repr=False)

    def __post_init__(self) -> None:
        self._forget = self._tasks.discard

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task held until it ends (asyncio keeps only weak references)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._forget, context=self._forget_in)
        return task

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        healthy = self.sessions.healthy()
        self.metrics.backend_up.labels(self.sessions.kind).set(1 if healthy else 0)
        # With on_outage: allow the backend is not required: streams go on
        # without it, so the replica stays in service.
        if not healthy and self.config.backend.on_outage == "reject":
            return False, f"{self.sessions.kind} backend unreachable"
        return True, "ready" if healthy else "ready (backend unreachable, on_outage: allow)"


CONTEXT = web.AppKey("sse_sidecar_context", Context)
