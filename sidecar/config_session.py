"""A route's ``session:`` block: where the key is read, the policy, and the credentials it binds.

``session.bind`` names the credentials a session's live stream belongs to
(sidecar/sessions/binding.py): a replace or a stop, and on resume routes a
reconnect, must present the same ones. It was ``resume.bind`` before it covered
routes without resume; that name is still read (pure: no I/O).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sidecar.errors import ConfigError

SessionPolicy = Literal["replace", "reject"]

#: What a session is bound to when neither ``session.bind`` nor ``resume.bind`` is set.
DEFAULT_BIND = ("header:Authorization", "header:Cookie")

_BIND_SOURCE = re.compile(r"^(header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SESSION_SOURCE = re.compile(r"^(header|cookie|query):[!#$%&'*+.^_`|~0-9A-Za-z-]+$|^path:\d+$")


@dataclass(frozen=True)
class Session:
    #: Where the key is read: header:NAME, cookie:NAME, query:NAME or path:INDEX.
    from_: str = "header:X-Session-Key"
    policy: SessionPolicy = "replace"
    required: bool = False
    pattern: str = r"^[A-Za-z0-9._:-]{1,128}$"
    #: The credentials a live stream of the session belongs to (header:NAME or
    #: cookie:NAME): a replace or a stop (and, with resume, a reconnect) must
    #: present the same ones. Null: ``resume.bind`` if set, else DEFAULT_BIND.
    #: Empty binds nothing, so whoever knows a session key can end its stream.
    bind: tuple[str, ...] | None = None


def bind_sources(session: Session, resume_bind: tuple[str, ...] | None) -> tuple[str, ...]:
    """The credentials a route's sessions are bound to: ``session.bind``, or its old name."""
    if session.bind is not None:
        return session.bind
    return resume_bind if resume_bind is not None else DEFAULT_BIND


def validate_session(session: Session, resume_bind: tuple[str, ...] | None, key: str) -> None:
    """Raise ConfigError naming the key (``key`` is the route's, e.g. ``routes[0]``)."""
    if not _SESSION_SOURCE.fullmatch(session.from_):
        raise ConfigError(
            f"{key}.session.from: expected header:NAME, cookie:NAME, query:NAME or path:N, "
            f"got {session.from_!r}"
        )
    try:
        re.compile(session.pattern)
    except re.error as exc:
        raise ConfigError(f"{key}.session.pattern: not a valid regular expression: {exc}") from None
    for name, sources in (("session.bind", session.bind), ("resume.bind", resume_bind)):
        for i, source in enumerate(sources or ()):
            if not _BIND_SOURCE.fullmatch(source):
                raise ConfigError(
                    f"{key}.{name}[{i}]: expected header:NAME or cookie:NAME, got {source!r}"
                )
    if session.bind is not None and resume_bind is not None and session.bind != resume_bind:
        raise ConfigError(
            f"{key}.resume.bind: the old name of session.bind, and the two differ "
            f"({list(resume_bind)} against {list(session.bind)}); set session.bind only"
        )
