"""The interface every session backend implements (memory, redis).

A *claim* says "this stream owns this session". Claiming an owned session
either fails (policy ``reject``) or tells the owner to stop with ``replaced``
and waits, briefly, for it to let go (policy ``replace``). A claim records
the fingerprint of its request's credentials (sidecar/sessions/binding.py),
and a replace or a stop must present the same ones: a session key alone is
no secret, so it must not be a way to end another user's stream. Every claim is
released on every way a stream ends; a backend with leases (Redis) also
frees the claims of a process that died without releasing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from sidecar.flag import Flag
from sidecar.sessions.binding import same_credentials

Policy = Literal["replace", "reject"]

#: How long a ``replace`` waits for the old stream to end before taking over.
REPLACE_WAIT = 1.0


def may_end(owner: str, presented: str) -> bool:
    """Whether a request bearing ``presented`` may replace or stop a stream bound to ``owner``.

    An owner bound to nothing ("": ``bind: []``, or a Redis claim written by
    a version that recorded no credentials) may be ended by anyone, as
    before bindings existed: refusing those would refuse every replace during
    a rolling upgrade, the owner's own refresh included.
    """
    return not owner or same_credentials(owner, presented)


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
    #: The owner's credentials (sessions/binding.py), where a backend compares
    #: them in process (memory); "" binds nothing. Redis keeps them in the
    #: owner value instead (sessions/redis_scripts.py), not twice per stream.
    binding: str = ""


class SessionStore(Protocol):
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def healthy(self) -> bool:
        """False while the backend cannot be reached (readiness reports it)."""
        ...

    async def claim(
        self, route: str, key: str, policy: Policy, holder: Holder, binding: str = ""
    ) -> Claim:
        """Own ``key`` on ``route`` for ``holder``, whose credentials' fingerprint is ``binding``.

        Raises :class:`~sidecar.errors.SessionConflict` under ``reject`` when a
        live stream owns it; :class:`~sidecar.errors.SessionForbidden` under
        ``replace`` when the live stream is bound to other credentials (see
        :func:`may_end`); :class:`~sidecar.errors.BackendUnavailable` when
        the backend cannot be reached.
        """
        ...

    async def release(self, claim: Claim) -> None:
        """Let go of ``claim``; never raises, a no-op if it was taken over."""
        ...

    async def stop(self, route: str, key: str, binding: str = "") -> bool:
        """Tell the stream that owns ``key`` (wherever it runs) to end with ``stopped``.

        False when no stream owns it; raises BackendUnavailable when unknown,
        SessionForbidden when the owner is bound to other credentials than
        ``binding`` (see :func:`may_end`).
        """
        ...
