"""Resume buffers: the events of a run, kept so a client that reconnects can catch up."""

from sidecar.replay.base import Entry, ReplayLog, ReplayStore

__all__ = ["Entry", "ReplayLog", "ReplayStore"]
