"""What a WebSocket gateway speaks: the ``websocket:`` block of a route, and its template.

Strategy: a gateway is described by data, not code — the request frame is a
JSON template with placeholders, every field the bridge reads is a dotted
path, every state name is a list — so another gateway fits by configuration.
The defaults are the generic agent-gateway profile (``req``/``res``/``event``
frames keyed by session and run id).
Everything here is pure: rendering a template and following a path do no I/O.

Paths are dotted keys (``payload.message.content``); a segment made of digits
indexes a list (``payload.items.0.text``). Keys that contain a dot cannot be
addressed (no gateway we know uses them).
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sidecar.errors import ConfigError
from sidecar.typedconf import Duration, Size
from sidecar.upstream.openclaw import Handshake

#: ``generic``: one socket per stream, the request template alone (any gateway);
#: ``openclaw``: the connect handshake, one shared socket, ``chat.abort``.
ProfileName = Literal["generic", "openclaw"]


class Missing(enum.Enum):
    """The type of :data:`MISSING`."""

    MISSING = "MISSING"


#: What :func:`lookup` returns for a path that leads nowhere (``None`` is JSON null).
MISSING: Final = Missing.MISSING


def default_request() -> dict[str, Any]:
    """The generic agent gateway's request frame; a fresh copy every call."""
    return {
        "type": "req",
        "id": "{request_id}",
        "method": "agent",
        "params": {
            "message": "{body.message}",
            "agentId": "{body.agentId}",
            "sessionKey": "{session_key}",
            "idempotencyKey": "{idempotency_key}",
        },
    }


@dataclass(frozen=True)
class States:
    """The values of the event state field, one list per meaning."""

    #: The run goes on; the event carries the cumulative text so far.
    delta: tuple[str, ...] = ("delta",)
    #: The run finished; the event may carry the whole text (else: what was sent).
    final: tuple[str, ...] = ("final",)
    #: The run failed: error/upstream_error with the event's error message.
    error: tuple[str, ...] = ("error",)
    #: The run was stopped: error/upstream_aborted with the event's message.
    aborted: tuple[str, ...] = ("aborted",)


@dataclass(frozen=True)
class Responses:
    """Response frames: the gateway's answers to our request frame."""

    #: Value of the frame type field (``WebSocketProfile.type``) in a response.
    type: str = "res"
    #: Path of the request id a response echoes; matched against our request's id.
    id: str = "id"
    #: Path of the success flag; anything but ``true`` fails the run (upstream_error).
    ok: str = "ok"
    #: Path of the run id in an accepted response. Empty: the gateway names no
    #: run in its responses, and the run id is latched from the first event
    #: that passes the session filter.
    run_id: str = "payload.runId"
    #: Path of the status that tells the acceptance from the final response.
    status: str = "payload.status"
    #: Path of the session key in the acceptance: the gateway's canonical form
    #: (``mysession`` → ``agent:main:mysession``, lowered), which events carry.
    session_key: str = "payload.sessionKey"
    #: Status values of an acceptance. A successful response with another
    #: status is the final response; it does not end the stream (the ``final``
    #: event does, and may arrive after it).
    accepted: tuple[str, ...] = ("accepted",)
    #: Where a failed response's message is, tried in order.
    error_message: tuple[str, ...] = ("error.message", "payload.errorMessage")


@dataclass(frozen=True)
class Events:
    """Event frames: what the gateway broadcasts about runs (ours and others)."""

    #: Value of the frame type field (``WebSocketProfile.type``) in an event.
    type: str = "event"
    #: Path of the event name.
    name: str = "event"
    #: Event names that carry a run's text and state.
    chat: tuple[str, ...] = ("chat",)
    #: Event names that carry tool calls (forwarded when ``forward_tools``).
    tools: tuple[str, ...] = ("agent",)
    #: Path that tells a tool call from the other streams of a tool event name
    #: (an agent gateway also reports lifecycle and assistant text there).
    #: Empty: every such event is a tool event.
    tool_stream: str = "payload.stream"
    #: Values of ``tool_stream`` that are tool calls.
    tool_streams: tuple[str, ...] = ("tool",)
    #: Values of ``tool_stream`` that report retries (forwarded as ``event:
    #: status`` when ``forward_status``).
    status_streams: tuple[str, ...] = ("run_status",)
    #: Path of what a forwarded ``event: status`` carries as its JSON data.
    status_payload: str = "payload.data"
    #: Path of what a forwarded ``event: tool`` carries as its JSON data.
    tool_payload: str = "payload"
    #: Path of the session key. Events whose key differs from the one our
    #: request frame sent (``request_session_key``) are dropped. Empty: no filter.
    session_key: str = "payload.sessionKey"
    #: Path of the run id; events of other runs are dropped.
    run_id: str = "payload.runId"
    #: Path of the run state (see :class:`States`).
    state: str = "payload.state"
    #: Path of the CUMULATIVE text: a string, or a list of ``{"type": "text",
    #: "text": ...}`` parts whose text parts are concatenated (others ignored).
    text: str = "payload.message.content"
    #: Where an error or abort message is, tried in order; the first string wins.
    error_message: tuple[str, ...] = ("payload.errorMessage", "payload.message")


@dataclass(frozen=True)
class WebSocketProfile:
    """How to talk to one gateway: the ``websocket:`` block of a ``ws://`` route."""

    #: ``openclaw``: the real OpenClaw gateway (handshake, shared connection,
    #: chat.abort); ``generic``: the template alone, one socket per stream.
    profile: ProfileName = "generic"
    #: The OpenClaw ``connect`` request (``profile: openclaw``).
    handshake: Handshake = field(default_factory=Handshake)
    #: A file holding the token (a Kubernetes Secret), read at every connect;
    #: ``token`` (or its environment override) wins when both are set.
    token_file: str | None = None
    #: Headers sent with the opening handshake (repr hidden: they may hold secrets).
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    #: ``openclaw``: sent as ``params.auth.token`` of connect; ``generic``: as
    #: ``Authorization: Bearer TOKEN`` with the handshake; null: none. Never logged.
    token: str | None = field(default=None, repr=False)
    #: The request frame sent once connected: JSON whose string values may hold
    #: placeholders ``{body.FIELD}`` (a field of the client's JSON body, dotted
    #: for nesting), ``{session_key}``, ``{idempotency_key}`` (a fresh uuid4 per
    #: request) and ``{request_id}``. A string that is exactly one placeholder
    #: becomes the value with its JSON type; an object member whose value is
    #: such a placeholder with no value (absent body field, no session key) is
    #: left out, so the gateway applies its own default. Inside a longer string
    #: a missing value is empty. Object keys are not templated.
    request: Any = field(default_factory=default_request)
    #: Path of the request id in the rendered request frame (responses echo it).
    request_id: str = "id"
    #: Path of the session key in the rendered request frame: the value events
    #: must carry. Empty, or absent from the rendered frame: no session filter.
    request_session_key: str = "params.sessionKey"
    #: Path of the frame type in every incoming frame.
    type: str = "type"
    #: Response frames (answers to our request).
    response: Responses = field(default_factory=Responses)
    #: Event frames (broadcast about every run).
    event: Events = field(default_factory=Events)
    #: State names of event frames.
    states: States = field(default_factory=States)
    #: Forward tool-call events of our run as ``event: tool`` (data: their payload).
    forward_tools: bool = False
    #: Forward retry reports of our run as ``event: status`` (a UI can say "retrying").
    forward_status: bool = False
    #: TCP connect plus WebSocket handshake must finish within this.
    connect_timeout: Duration = 10.0
    #: Frames over this many bytes are counted (``too_large``) and skipped; frames
    #: over OVERSIZE_FACTOR times this fail the connection (error/upstream_protocol),
    #: so memory stays bounded.
    max_frame_bytes: Size = 1024 * 1024


#: Frames up to this multiple of ``max_frame_bytes`` are read and skipped; bigger
#: ones make the WebSocket library fail the connection instead of buffering them.
OVERSIZE_FACTOR: Final = 4


# --- paths ---------------------------------------------------------------------------


def lookup(value: object, path: str) -> object:
    """The value at dotted ``path`` in ``value``, or :data:`MISSING`."""
    if not path:
        return MISSING
    node = value
    for part in path.split("."):
        if isinstance(node, Mapping):
            if part not in node:
                return MISSING
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


# --- the request template ----------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(body(?:\.[^{}.\s]+)+|session_key|idempotency_key|request_id)\}")
# What a placeholder looks like, to catch typos such as {sesion_key} at load time.
_PLACEHOLDER_LIKE = re.compile(r"\{[A-Za-z_][\w.-]*\}")
KNOWN_PLACEHOLDERS: Final = ("{body.FIELD}", "{session_key}", "{idempotency_key}", "{request_id}")


def render_request(
    template: object,
    *,
    body: object,
    session_key: str | None,
    request_id: str,
    idempotency_key: str,
) -> Any:
    """The request frame: ``template`` with its placeholders filled (see ``request``)."""
    values: dict[str, object] = {
        "session_key": MISSING if session_key is None else session_key,
        "idempotency_key": idempotency_key,
        "request_id": request_id,
    }

    def value_of(name: str) -> object:
        if name.startswith("body."):
            return lookup(body, name[5:])
        return values[name]

    def embed(match: re.Match[str]) -> str:
        value = value_of(match[1])
        if value is MISSING or value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def render(node: object) -> object:
        if isinstance(node, str):
            whole = _PLACEHOLDER.fullmatch(node)
            if whole is not None:
                return value_of(whole[1])
            return _PLACEHOLDER.sub(embed, node)
        if isinstance(node, Mapping):
            out = {}
            for key, item in node.items():
                rendered = render(item)
                if rendered is not MISSING:
                    out[key] = rendered
            return out
        if isinstance(node, list | tuple):
            return [None if (r := render(item)) is MISSING else r for item in node]
        return node

    result = render(template)
    return None if result is MISSING else result


# --- validation ------------------------------------------------------------------------


def validate_profile(profile: WebSocketProfile, key: str = "websocket") -> None:
    """Checks :func:`sidecar.config.build` cannot make; ConfigError names the key."""
    try:
        json.dumps(profile.request, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}.request: not a JSON value: {exc}") from None
    for where, text in _strings(profile.request, f"{key}.request"):
        for found in _PLACEHOLDER_LIKE.findall(text):
            if not _PLACEHOLDER.fullmatch(found):
                known = ", ".join(KNOWN_PLACEHOLDERS)
                raise ConfigError(f"{where}: unknown placeholder {found} (known: {known})")
    sample = render_request(
        profile.request, body={}, session_key="k", request_id="r", idempotency_key="i"
    )
    if lookup(sample, profile.request_id) is MISSING:
        raise ConfigError(
            f"{key}.request_id: path {profile.request_id!r} is not in the request template"
        )
    required = {
        "type": profile.type,
        "response.type": profile.response.type,
        "response.id": profile.response.id,
        "response.ok": profile.response.ok,
        "event.type": profile.event.type,
        "event.name": profile.event.name,
        "event.run_id": profile.event.run_id,
        "event.state": profile.event.state,
        "event.text": profile.event.text,
    }
    for name, value in required.items():
        if not value:
            raise ConfigError(f"{key}.{name}: must not be empty")
    if profile.response.type == profile.event.type:
        raise ConfigError(f"{key}.event.type: must differ from response.type")
    _validate_states(profile.states, f"{key}.states")
    hs = profile.handshake
    if not hs.client_id or not hs.client_mode or not hs.role:
        raise ConfigError(f"{key}.handshake: client_id, client_mode and role must not be empty")
    if profile.profile == "openclaw" and "operator.write" not in hs.scopes:
        raise ConfigError(
            f"{key}.handshake.scopes: needs operator.write (agent and chat.abort need it)"
        )
    if profile.token_file is not None and not profile.token_file:
        raise ConfigError(f"{key}.token_file: must not be empty")
    for name, value in {**profile.headers, "token": profile.token or ""}.items():
        if "\r" in value or "\n" in value:
            where = "token" if name == "token" else f"headers.{name}"
            raise ConfigError(f"{key}.{where}: must not contain a line break")
    if not (math.isfinite(profile.connect_timeout) and profile.connect_timeout > 0):
        raise ConfigError(f"{key}.connect_timeout: must be greater than 0")
    if profile.max_frame_bytes <= 0:
        raise ConfigError(f"{key}.max_frame_bytes: must be greater than 0")


def _validate_states(states: States, key: str) -> None:
    seen: dict[str, str] = {}
    for name in ("delta", "final", "error", "aborted"):
        values: tuple[str, ...] = getattr(states, name)
        if not values:
            raise ConfigError(f"{key}.{name}: needs at least one state name")
        for value in values:
            if value in seen:
                raise ConfigError(f"{key}.{name}: {value!r} is already a {seen[value]} state")
            seen[value] = name


def _strings(node: object, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _strings(v, f"{where}[{i}]")
