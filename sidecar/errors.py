"""The one exception family of sse-sidecar.

Third-party errors (aiohttp, websockets, redis) are translated into these at
the boundary where they happen, so the proxy only ever reasons about ours.
Each stream-ending error knows the terminal ``error`` code the client sees
(DESIGN.md, "The normalised stream").
"""

from __future__ import annotations

from typing import ClassVar


class SidecarError(Exception):
    """Base of every error sse-sidecar raises on purpose."""

    #: The ``code`` of the terminal ``error`` event this error ends a stream with.
    code: ClassVar[str] = "internal"


class ConfigError(SidecarError):
    """The configuration is invalid; the message names the key and the value."""

    code = "config"


class ListenError(SidecarError):
    """A port in the configuration cannot be listened on (in use, not permitted)."""

    code = "listen"


class ProtocolError(SidecarError):
    """The upstream sent bytes that are not a valid event stream."""

    code = "upstream_protocol"
    #: Bounded label for metrics: which rule the bytes broke.
    kind: ClassVar[str] = "malformed"


class InvalidUTF8(ProtocolError):
    kind = "invalid_utf8"


class LineTooLong(ProtocolError):
    kind = "line_too_long"


class EventTooLarge(ProtocolError):
    kind = "event_too_large"


class TruncatedEvent(ProtocolError):
    kind = "truncated_event"


class UpstreamError(SidecarError):
    """The upstream could not be reached or failed while streaming."""


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"
    #: The HTTP status a client gets when this is known before the stream is committed.
    status: ClassVar[int] = 502


class UpstreamConnectTimeout(UpstreamUnreachable):
    """``limits.connect_timeout`` passed before a connection was made."""

    status = 504


class UpstreamDisconnected(UpstreamError):
    code = "upstream_disconnected"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamRunFailed(UpstreamError):
    """The producer itself reported that the run failed (a gateway's ``error`` state)."""

    code = "upstream_error"


class UpstreamAborted(UpstreamError):
    """The producer reported the run as aborted (a gateway's ``aborted`` state)."""

    code = "upstream_aborted"


class GatewayRefused(UpstreamUnreachable):
    """A WebSocket gateway refused our handshake (wrong token, not paired, protocol).

    ``gateway_code`` is the gateway's own code (``AUTH_TOKEN_MISMATCH``…): the
    message names it, so the operator sees what to fix.
    """

    code = "upstream_refused"

    def __init__(self, gateway_code: str, message: str) -> None:
        super().__init__(message)
        self.gateway_code = gateway_code


class UpstreamAbandoned(UpstreamError):
    """A resumable run lost its replay log (backend down): it can reach no client."""

    code = "backend_unavailable"


class UpstreamBadHead(UpstreamError, ProtocolError):
    """The upstream's response head is invalid or over a limit: 502 before the
    stream is committed, ``error/upstream_protocol`` after (as nginx's "upstream
    sent too big header")."""

    code = "upstream_protocol"
    kind = "invalid_head"


class UpstreamHeadTooLarge(UpstreamBadHead):
    kind = "head_too_large"


class UpstreamTooManyHeaders(UpstreamBadHead):
    kind = "too_many_headers"


class UpstreamInterimFlood(UpstreamBadHead):
    kind = "too_many_interim"


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status after the stream had begun."""

    code = "upstream_status"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(SidecarError):
    """The client's connection closed; nothing more can be written to it."""

    code = "client_disconnected"


class SlowClient(ClientGone):
    """The client did not take one write within ``limits.write_timeout``."""

    code = "slow_client"


class SessionError(SidecarError):
    """A request's session cannot be served; answered before any stream starts."""


class BadSessionKey(SessionError):
    code = "bad_session_key"


class SessionConflict(SessionError):
    """Policy ``reject``: the session already has a live stream."""

    code = "session_conflict"


class SessionForbidden(SessionError):
    """The session's live stream or run is bound to other credentials (``session.bind``)."""

    code = "session_forbidden"


class BackendUnavailable(SessionError):
    """The session/replay backend (Redis) cannot be reached."""

    code = "backend_unavailable"


class InvalidResumeState(SidecarError):
    """A stored upstream-resume state (a kept request, a cursor) that does not parse."""

    code = "resume_state"
