"""A route's ``upstream_resume:`` block: its typed config, placeholders and checks (pure).

The resume request is described by templates (sidecar/upstream/resumption.py
renders them): ``{id}`` is the last upstream event id, ``{data.PATH}`` a
field of an earlier event's JSON data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from sidecar.errors import ConfigError
from sidecar.typedconf import Duration

BodyMode = Literal["keep", "drop"]
ResumeMethod = Literal["GET", "POST"]


@dataclass(frozen=True)
class UpstreamResume:
    """A route's ``upstream_resume:`` block: re-request a broken upstream after its last id."""

    enabled: bool = False
    #: Resume requests per break; a resumed connection that forwards a new
    #: event starts the count again, so a long stream survives many breaks.
    attempts: int = 3
    #: The wait before attempt n is backoff × 2^(n−1), at most max_backoff,
    #: then jittered to between half and all of it (breaks of many streams
    #: at once, a producer restart, do not come back in one burst).
    backoff: Duration = 0.25
    max_backoff: Duration = 5.0
    #: The header that carries ``{id}`` (null: none).
    header: str | None = "Last-Event-ID"
    #: Query parameters set on the resume request (values are templates).
    query: dict[str, str] = field(default_factory=dict)
    #: The resume request's method (null: the original's).
    method: ResumeMethod | None = None
    #: A path on the upstream's host, a template (null: the original URL);
    #: it replaces the original path and query.
    path: str | None = None
    #: keep: the original body goes again; drop: no body.
    body: BodyMode = "keep"
    #: What orders the upstream's events, so repeats can be told:
    #: ``id`` (the number that ends the event id) or ``data.PATH``.
    order: str = "id"


PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"id|data(?:\.[A-Za-z0-9_-]+)+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers the resume header must not be: the framing and the target are ours.
_NOT_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te",
                          "upgrade", "trailer", "keep-alive", "proxy-connection"})  # fmt: skip


def placeholders(config: UpstreamResume) -> tuple[str, ...]:
    """Every placeholder the resume request needs a value for (``id``, ``data.PATH``)."""
    names: list[str] = ["id"] if config.header else []
    for template in _templates(config).values():
        names += PLACEHOLDER.findall(template)
    return tuple(dict.fromkeys(names))


def _templates(config: UpstreamResume) -> dict[str, str]:
    """The templates of the resume request, by key (``path``, ``query.NAME``)."""
    found = {"path": config.path} if config.path is not None else {}
    return found | {f"query.{name}": value for name, value in config.query.items()}


# --- validation ------------------------------------------------------------------------


def validate_upstream_resume(config: UpstreamResume, key: str, *, websocket: bool) -> None:
    """Checks the typed loader cannot make; ConfigError names the key."""
    if not config.enabled:
        return
    if websocket:
        raise ConfigError(
            f"{key}.enabled: only for http(s) upstreams (a WebSocket gateway's run is not "
            "resumed by id)"
        )
    if config.attempts < 1:
        raise ConfigError(f"{key}.attempts: must be at least 1, got {config.attempts}")
    if config.max_backoff < config.backoff:
        raise ConfigError(
            f"{key}.max_backoff: must be at least backoff ({config.backoff:g}s), "
            f"got {config.max_backoff:g}s"
        )
    if config.header is not None and (
        not _TOKEN.fullmatch(config.header) or config.header.lower() in _NOT_HEADERS
    ):
        raise ConfigError(f"{key}.header: not a header the resume can set: {config.header!r}")
    if config.path is not None and (
        not config.path.startswith("/") or any(c in config.path for c in "?#\\")
    ):
        raise ConfigError(f"{key}.path: must start with / and hold no ? # or \\: {config.path!r}")
    for where, template in _templates(config).items():
        if template.count("{") != template.count("}"):
            raise ConfigError(f"{key}.{where}: unbalanced braces in {template!r}")
        for name in PLACEHOLDER.findall(template):
            if not _NAME.fullmatch(name):
                raise ConfigError(
                    f"{key}.{where}: unknown placeholder {{{name}}} (known: {{id}}, {{data.PATH}})"
                )
    for name in config.query:
        if not name:
            raise ConfigError(f"{key}.query: a parameter needs a name")
    if not placeholders(config):
        raise ConfigError(
            f"{key}: the resume request must say where to go on: set header, or put "
            "{id} or {data.PATH} in query or path (else the producer starts over)"
        )
    if not _NAME.fullmatch(config.order):
        raise ConfigError(f"{key}.order: expected id or data.PATH, got {config.order!r}")
    if config.method == "GET" and config.body == "keep":
        raise ConfigError(f"{key}.body: a GET carries no body: set body: drop")
