"""The interface every session backend implements (memory, redis).

A *claim* says "this stream owns this session". Claiming an owned session
either fails (policy ``reject``) or tells the owner to stop with ``replaced``
and waits, briefly, for it to let go (policy ``replace``). Every claim is
released on every way a stream ends; a backend with leases (Redis) also
frees the claims of a process that died without releasing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from sidecar.flag import Flag

Policy = Literal["replace", "reject"]

#: How long a ``replace`` waits for the old stream to end before taking over.
REPLACE_WAIT = 1.0


class Holder(Protocol):
    """The stream behind a claim, as a backend sees it: something it can stop."""

    def stop(self, code: str) -> None: ...


@dataclass(eq=False, slots=True)
class Claim:
    route: str
    key: str
    #: Fencing token: strictly increasing per session, so an old owner that
    #: wakes up late can tell it no longer owns the session.
    token: int
    holder: Holder
    #: True when taking it ended another stream (policy replace).
    replaced: bool = False
    released: Flag = field(default_factory=Flag)


class SessionStore(Protocol):
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def healthy(self) -> bool:
        """False while the backend cannot be reached (readiness reports it)."""
        ...

    async def claim(self, route: str, key: str, policy: Policy, holder: Holder) -> Claim:
        """Own ``key`` on ``route`` for ``holder``.

        Raises :class:`~sidecar.errors.SessionConflict` under ``reject`` when a
        live stream owns it, :class:`~sidecar.errors.BackendUnavailable` when
        the backend cannot be reached.
        """
        ...

    async def release(self, claim: Claim) -> None:
        """Let go of ``claim``; never raises, a no-op if it was taken over."""
        ...

    async def stop(self, route: str, key: str) -> bool:
        """Tell the stream that owns ``key`` (wherever it runs) to end with ``stopped``.

        False when no stream owns it; raises BackendUnavailable when unknown.
        """
        ...
