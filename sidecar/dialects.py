"""Dialects: the forms of what the sidecar writes itself, per client family.

Strategy: a route's clients are either generic SSE consumers (EventSource,
fetch() parsers) or one family's official SDK, which turns every SSE event it
does not know into a chunk and only raises on its own error shape. A Dialect
is the small, pure table of those forms: the keepalive, the synthesized
terminal error, the clean end, and the upstream terminal markers the family
uses. Nothing here knows sockets or clocks.

- ``generic``: ``event: keepalive`` / ``event: error`` with ``{"type":"error","code",…}``.
- ``openai`` (chat completions and Responses): keepalives are SSE comments,
  which every SSE parser drops; errors carry an ``error`` object, the one
  shape the SDK raises ``APIError`` on (its stream loop checks ``data.error``
  on every event, so one form serves chat completions and Responses alike);
  ``[DONE]`` and ``response.completed|failed|incomplete`` are terminal.
- ``anthropic`` (Messages): keepalive ``event: ping`` (the SDK skips it),
  ``event: error`` with ``{"type":"error","error":{"type","message"}}`` (the
  SDK raises its APIStatusError), ``message_stop`` terminal.

The clean end the sidecar writes when an upstream closed without a terminal
event (or a run was stopped) is an event only in ``generic``: the SDKs would
hand an unknown event to the caller as a chunk, while a comment keeps the
reason visible to curl and logs and invisible to the SDK loop, which ends as
it would directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Protocol

from sidecar.sse import encode_comment, encode_event

DialectName = Literal["generic", "openai", "anthropic"]

#: Upstream paths that mark an LLM API whose SDK needs its own dialect.
SDK_PATHS: dict[str, DialectName] = {
    "/v1/chat/completions": "openai",
    "/v1/responses": "openai",
    "/v1/messages": "anthropic",
}

#: Codes of the terminal ``error`` event the sidecar writes itself (DESIGN.md),
#: in every dialect's form (Dialect.error).
ERROR_CODES = frozenset(
    {
        "upstream_status",
        "upstream_unreachable",
        "upstream_refused",
        "upstream_disconnected",
        "upstream_timeout",
        "upstream_protocol",
        "upstream_error",
        "upstream_aborted",
        "replaced",
        "shutdown",
        "resume_gap",
        "backend_unavailable",
    }
)

#: The Anthropic error type that fits each of our codes (their SDKs and UIs switch on it).
_ANTHROPIC_TYPES = {
    "upstream_timeout": "timeout_error",
    "shutdown": "overloaded_error",
    "backend_unavailable": "overloaded_error",
}


def _json(payload: object) -> str:
    return json.dumps(payload, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Dialect:
    """The forms one client family understands (see the module note)."""

    name: DialectName
    #: Heartbeats and converted comments, encoded once.
    keepalive: bytes
    terminal_events: frozenset[str] = frozenset()
    terminal_data: frozenset[str] = frozenset()

    @property
    def keepalive_is_event(self) -> bool:
        """False when the keepalive is a comment (a ``retry:`` cannot ride on it)."""
        return not self.keepalive.startswith(b":")

    def error(
        self,
        code: str,
        message: str,
        *,
        partial: bool,
        retry_ms: int | None = None,
        event_id: str | None = None,
        **extra: object,
    ) -> bytes:
        """The terminal error event in this dialect; ``code`` and ``partial`` always kept."""
        payload: dict[str, object]
        if self.name == "openai":
            # Responses-style top-level fields for UIs; ``error`` for the SDK to raise on.
            # The code leads the message: APIError's str() is the message alone.
            text = f"{code}: {message}"
            payload = {
                "type": "error",
                "code": code,
                "message": text,
                "param": None,
                "partial": partial,
                "error": {"type": "sidecar_error", "code": code, "message": text,
                          "partial": partial, **extra},
            }  # fmt: skip
        elif self.name == "anthropic":
            payload = {
                "type": "error",
                "error": {
                    "type": _ANTHROPIC_TYPES.get(code, "api_error"),
                    "message": f"{code}: {message}",
                    "code": code,
                    "partial": partial,
                    **extra,
                },
            }
        else:
            payload = {
                "type": "error",
                "code": code,
                "message": message,
                "partial": partial,
                **extra,
            }
        return encode_event(_json(payload), "error", id=event_id, retry=retry_ms)

    def end(self, reason: str, *, partial: bool, event_id: str | None = None) -> bytes:
        """The clean end the sidecar writes (``upstream_closed``, ``stopped``)."""
        payload = {"type": "end", "reason": reason, "partial": partial}
        if self.name == "generic":
            return encode_event(_json(payload), "end", id=event_id)
        return encode_comment("end " + _json(payload)) + b"\n"


def dialect(name: DialectName, generic_keepalive: bytes) -> Dialect:
    """The dialect called ``name``; ``generic`` keeps the route's configured keepalive."""
    if name == "openai":
        return Dialect(
            "openai",
            encode_comment("keepalive") + b"\n",
            frozenset({"response.completed", "response.failed", "response.incomplete"}),
            frozenset({"[DONE]"}),
        )
    if name == "anthropic":
        return Dialect(
            "anthropic",
            encode_event('{"type":"ping"}', "ping"),
            frozenset({"message_stop"}),
        )
    return Dialect("generic", generic_keepalive)


def suggested(upstream_path: str) -> DialectName | None:
    """The dialect an upstream path looks like it needs, if any."""
    path = upstream_path.rstrip("/")
    for suffix, name in SDK_PATHS.items():
        if path.endswith(suffix):
            return name
    return None


class _RouteLike(Protocol):
    @property
    def dialect(self) -> DialectName: ...

    @property
    def keepalive(self) -> _KeepaliveLike: ...


class _KeepaliveLike(Protocol):
    @property
    def event(self) -> str: ...

    @property
    def data(self) -> str: ...


def dialect_for(route: _RouteLike) -> Dialect:
    """A route's dialect (config.Route; a Protocol here, as config imports this module)."""
    keepalive = route.keepalive
    return dialect(route.dialect, encode_event(keepalive.data, keepalive.event))


_DESCRIPTIONS: dict[DialectName, str] = {
    "generic": "keepalive `event: keepalive`, errors `event: error` {type, code, message, partial}",
    "openai": "keepalive `: keepalive` comment, errors {error: {type, code, message}} "
    "(the OpenAI SDK raises APIError), terminal [DONE] / response.completed",
    "anthropic": "keepalive `event: ping`, errors `event: error` {type: error, error: {…}} "
    "(the Anthropic SDK raises APIStatusError), terminal message_stop",
}


def describe(name: DialectName) -> str:
    """One line for ``--check-config``: what a route's clients get from the sidecar."""
    return f"dialect {name}: {_DESCRIPTIONS[name]}"


def warnings(
    key: str, upstream_path: str, name: DialectName, *, retry: bool, open_event: bool
) -> list[str]:
    """What ``--check-config`` warns about a route's dialect (``key``: its config path)."""
    out: list[str] = []
    wanted = suggested(upstream_path)
    if wanted is not None and name == "generic":
        out.append(
            f"{key}.dialect: the upstream path {upstream_path!r} looks like an {wanted} API, "
            f"but the route uses dialect generic: the {wanted} SDK turns our keepalive into a "
            f"chunk and does not raise on our errors; set dialect: {wanted}"
        )
    if name == "openai" and retry and not open_event:
        out.append(
            f"{key}.stream.retry: not sent on an openai dialect route (a comment keepalive "
            "cannot carry it, and a retry: alone is an empty event); set stream.open_event "
            "or drop stream.retry"
        )
    if name != "generic" and open_event:
        out.append(
            f"{key}.stream.open_event: the {name} SDK hands an unknown event to the caller "
            "as a chunk; leave open_event unset on this route"
        )
    return out
