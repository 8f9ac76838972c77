"""When a stream must act: its next deadline, the limit it reached, a heartbeat being due.

Pure (no clock, no I/O): every path of a stream (the awaiting pump, the
splice's timer, the wait for upstream headers) asks these functions with the
times it holds, so each decision is made in one place (STYLE.md habit 11).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import Limits
from sidecar.errors import UpstreamTimeout
from sidecar.normalize import heartbeat_due

#: While a client is behind, the splice re-checks the total limit this often.
CONGESTED_RECHECK = 1.0


@dataclass(frozen=True, slots=True)
class Pacing:
    """A stream's limits and heartbeat interval (0: this stream never heartbeats)."""

    idle_timeout: float
    max_duration: float
    heartbeat: float

    @classmethod
    def of(cls, limits: Limits, heartbeat: float) -> Pacing:
        return cls(limits.idle_timeout, limits.max_duration, heartbeat)

    def deadline(self, started: float, last_byte: float, last_write: float) -> float:
        """The next time something may be due: a heartbeat, the idle limit or the total one."""
        deadline = min(last_byte + self.idle_timeout, started + self.max_duration)
        if self.heartbeat > 0:
            deadline = min(deadline, last_write + self.heartbeat)
        return deadline

    def congested_deadline(self, now: float, started: float) -> float:
        """The deadline while the client is behind: only the total limit runs."""
        return min(now + CONGESTED_RECHECK, started + self.max_duration)

    def limit_reached(
        self, now: float, started: float, last_byte: float, *, idle: bool = True
    ) -> UpstreamTimeout | None:
        """The limit reached by ``now``, if any (``idle``: check that one too)."""
        if now >= started + self.max_duration:
            return UpstreamTimeout(f"stream reached limits.max_duration ({self.max_duration:g}s)")
        if idle and now - last_byte >= self.idle_timeout:
            return UpstreamTimeout(
                f"no bytes from upstream for limits.idle_timeout ({self.idle_timeout:g}s)"
            )
        return None

    def heartbeat_due(self, now: float, last_write: float) -> bool:
        """A heartbeat is due when nothing was written for the interval (0: never)."""
        return heartbeat_due(now, last_write, self.heartbeat)
