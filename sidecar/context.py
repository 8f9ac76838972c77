"""Typed application state shared by the handlers of one sidecar process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from sidecar.config import Config
from sidecar.metrics import Metrics
from sidecar.sessions.base import SessionStore


class StreamHandle:
    """What the process knows of one live stream: enough to stop it from outside."""

    __slots__ = ("id", "route", "stop_code", "task")

    def __init__(self, stream_id: str, route: str, task: asyncio.Task[object]) -> None:
        self.id = stream_id
        self.route = route
        self.task = task
        self.stop_code: str | None = None

    def stop(self, code: str) -> None:
        """End the stream with ``error/<code>`` (shutdown, replaced)."""
        if self.stop_code is None:
            self.stop_code = code
            self.task.cancel()


@dataclass
class Context:
    config: Config
    metrics: Metrics
    sessions: SessionStore
    session: aiohttp.ClientSession | None = None
    streams: set[StreamHandle] = field(default_factory=set)
    draining: bool = False

    @property
    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise RuntimeError("the upstream client exists only while the app runs")
        return self.session

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        healthy = self.sessions.healthy()
        self.metrics.backend_up.labels(self.sessions.kind).set(1 if healthy else 0)
        if not healthy:
            return False, f"{self.sessions.kind} backend unreachable"
        return True, "ready"


CONTEXT = web.AppKey("sse_sidecar_context", Context)
