"""What the front did to the response besides timing: headers, framing, comments, HTTP/2."""

from __future__ import annotations

from sidecar.doctor.hops import advice, hops
from sidecar.doctor.model import Finding, Observation, header

#: The headers the sidecar sets on every stream, and what it sets them to.
_SIDECAR_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def headers(obs: Observation) -> Finding:
    parts = []
    for name, sent in _SIDECAR_HEADERS.items():
        value = header(obs.headers, name)
        if value is None:
            why = " (nginx acts on it and removes it)" if name == "X-Accel-Buffering" else ""
            parts.append(f"{name} absent{why}")
        elif value.replace(" ", "").lower() != sent.replace(" ", "").lower():
            parts.append(f"{name}: {value} (the sidecar sent {sent!r})")
        else:
            parts.append(f"{name}: {value}")
    for name in ("Server", "Via"):
        value = header(obs.headers, name)
        if value is not None:
            parts.append(f"{name}: {value}")
    named = hops(obs.headers)
    if named:
        parts.append("front: " + ", ".join(p for p, _ in named))
    elif "aiohttp" in (header(obs.headers, "Server") or "").lower():
        # The sidecar's own Server header came through unchanged.
        parts.append(
            "front: does not name itself, and passed the sidecar's Server header on "
            "(HAProxy does; nginx and Caddy put their own)"
        )
    else:
        parts.append("front: does not name itself")
    return Finding("headers", "note", "; ".join(parts))


def framing(obs: Observation) -> Finding:
    """A Content-Length means a hop counted the whole body first; Connection: close costs."""
    length = header(obs.headers, "Content-Length")
    if length is not None:
        text = (
            f"Content-Length: {length} added by the chain: the sidecar streams without one, "
            "so a hop read the whole stream before sending any of it, and clients see "
            f"nothing until it ends; {advice(obs.headers, 'length')}"
        )
        return Finding("framing", "problem", text)
    connection = (header(obs.headers, "Connection") or "").lower()
    if "close" in connection:
        text = (
            "Connection: close from the front: harmless for the stream itself (it ends "
            "when the connection does), but every reconnect opens a new connection (and "
            "TLS handshake), and the front may be speaking HTTP/1.0 to the client"
        )
        return Finding("framing", "note", text)
    chunked = "chunked" in (header(obs.headers, "Transfer-Encoding") or "").lower()
    how = "chunked" if chunked else "as it comes"
    return Finding("framing", "ok", f"streamed {how}, no Content-Length, connection kept")


def comments(obs: Observation) -> Finding:
    if not obs.comment_sent:
        return Finding("comments", "note", "cannot tell: this sidecar's probe sends no comment")
    if not obs.decodable or not (obs.ticks or obs.end == "probe_end"):
        return Finding("comments", "note", "cannot tell: no events could be read")
    if obs.comment_seen:
        return Finding("comments", "ok", "passed: the probe's comment line arrived")
    text = (
        "stripped: the probe's comment line did not arrive though its events did; with "
        "comments: pass, clients will not see the upstream's comments (the default, "
        f"convert, makes them events and is unaffected); {advice(obs.headers, 'comments')}"
    )
    return Finding("comments", "problem", text)


_SIX = (
    "browsers open at most 6 HTTP/1.1 connections per origin, so with 6 open "
    "EventSources (tabs count) the 7th, and every other request to that origin, waits"
)


def http2(obs: Observation) -> Finding:
    if obs.http2 is None:
        return Finding("http2", "note", "not checked")
    if obs.tls and obs.http2 == "h2":
        text = (
            "offered (ALPN h2): browsers carry every EventSource of the origin on one "
            "connection, so the 6-connection limit of HTTP/1.1 does not apply"
        )
        return Finding("http2", "ok", text)
    if obs.tls:
        text = (
            f"not offered over TLS (ALPN: http/1.1): {_SIX}. If clients may open several "
            f"streams, turn it on: {advice(obs.headers, 'http2')}"
        )
        return Finding("http2", "note", text)
    h2c = "accepts" if obs.http2 == "h2c" else "refuses"
    text = (
        f"plain http (the front {h2c} an h2c upgrade, which browsers never use): {_SIX}. "
        "Serve the origin over TLS with HTTP/2 if clients may open several streams"
    )
    return Finding("http2", "note", text)
