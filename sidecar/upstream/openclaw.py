"""The OpenClaw gateway's protocol, as data: the connect handshake and ``chat.abort``.

Strategy: pure functions over frames (no socket, no clock), so the handshake
is tested against frames recorded from the real gateway (openclaw 2026.9.6,
``shared/openclaw-gateway.md``). :mod:`sidecar.upstream.gateway` does the I/O.

The gateway refuses any first request but ``connect`` (close 1008), wants the
token in ``params.auth.token`` (an HTTP header is ignored), a ``client.id``
from its fixed list, ``operator.write`` for ``agent``, and ``caps:
["tool-events"]`` before it sends ``stream: "tool"`` events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sidecar.errors import GatewayRefused

#: The protocol version this bridge speaks (protocol 3 gets "protocol mismatch").
PROTOCOL: Final = 4
#: The capability that makes the gateway send tool events.
TOOL_EVENTS: Final = "tool-events"


@dataclass(frozen=True)
class Handshake:
    """The ``connect`` request's fields (``websocket.handshake``); every one overridable."""

    #: Sent as minProtocol and maxProtocol.
    protocol: int = PROTOCOL
    #: One of the gateway's fixed client ids (``cli``, ``gateway-client``,
    #: ``webchat``, ``test``…); others, ``sse-sidecar`` included, are refused.
    client_id: str = "gateway-client"
    client_mode: str = "backend"
    client_version: str = "0.1.0"
    platform: str = "linux"
    role: str = "operator"
    #: ``operator.write`` is needed for ``agent`` and ``chat.abort``.
    scopes: tuple[str, ...] = ("operator.read", "operator.write")
    #: Extra capabilities; ``tool-events`` is added when tools are forwarded.
    caps: tuple[str, ...] = ()


def connect_frame(
    handshake: Handshake, token: str | None, request_id: str, *, tools: bool
) -> dict[str, Any]:
    """The first request on a connection (sent without waiting for ``connect.challenge``)."""
    caps = list(handshake.caps)
    if tools and TOOL_EVENTS not in caps:
        caps.append(TOOL_EVENTS)
    params: dict[str, Any] = {
        "minProtocol": handshake.protocol,
        "maxProtocol": handshake.protocol,
        "client": {
            "id": handshake.client_id,
            "version": handshake.client_version,
            "platform": handshake.platform,
            "mode": handshake.client_mode,
        },
        "role": handshake.role,
        "scopes": list(handshake.scopes),
        "caps": caps,
    }
    if token is not None:
        params["auth"] = {"token": token}
    return {"type": "req", "id": request_id, "method": "connect", "params": params}


def abort_frame(request_id: str, session_key: str | None, run_id: str) -> dict[str, Any]:
    """``chat.abort``: stops the run (closing the socket does not, and the session queues)."""
    params: dict[str, Any] = {"runId": run_id}
    if session_key is not None:
        params["sessionKey"] = session_key
    return {"type": "req", "id": request_id, "method": "chat.abort", "params": params}


def hello_result(frame: object, request_id: str) -> bool | None:
    """Whether ``frame`` is the answer to our connect: True accepted, None not it.

    A refusal raises :class:`GatewayRefused` naming the gateway's code
    (``error.details.code`` when present, like ``AUTH_TOKEN_MISMATCH``, else
    ``error.code``).
    """
    if not isinstance(frame, dict) or frame.get("type") != "res" or frame.get("id") != request_id:
        return None
    if frame.get("ok") is True:
        return True
    raise refusal(frame.get("error"))


def refusal(error: object) -> GatewayRefused:
    """The error for a refused connect, from the response's ``error`` object."""
    code, message = "UNKNOWN", "the gateway refused the connection"
    if isinstance(error, dict):
        details = error.get("details")
        detail_code = details.get("code") if isinstance(details, dict) else None
        top = error.get("code")
        code = _label(detail_code) or _label(top) or code
        if isinstance(error.get("message"), str) and error["message"].strip():
            message = error["message"].strip()[:300]
    return GatewayRefused(code, f"the gateway refused the connection: {code}: {message}")


def closed_refusal(code: int | None, reason: str) -> GatewayRefused:
    """A close during the handshake with no response (1008 policy, 1002 protocol)."""
    names = {1008: "POLICY_VIOLATION", 1002: "PROTOCOL_MISMATCH"}
    label = names.get(code or 0, f"CLOSED_{code}" if code else "CLOSED")
    detail = f": {reason[:300]}" if reason else ""
    return GatewayRefused(label, f"the gateway closed the connection during connect{detail}")


def _label(value: object) -> str | None:
    # The code goes into logs and the client's error: keep it a short token.
    if isinstance(value, str) and value and len(value) <= 64 and value.replace("_", "").isalnum():
        return value
    return None
