"""Which proxy on the path a finding is likely about, and that proxy's own setting for it.

Strategy: the response's ``Via`` and ``Server`` headers name the proxies that
chose to say who they are (nginx and Caddy set ``Server``; HAProxy says
nothing by default and passes the sidecar's own on). A recognised proxy gets
its own directive; otherwise the advice lists the usual ones, because quoting
nginx to someone running a cloud load balancer is no help.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Problem = Literal[
    "buffering", "compression", "idle_cut", "age_cap", "delay", "comments", "http2", "length"
]

#: {proxy: {problem: its setting}}. Missing: that proxy has no such setting.
SETTINGS: dict[str, dict[Problem, str]] = {
    "nginx": {
        "buffering": "proxy_buffering off; proxy_http_version 1.1, and no "
        "proxy_ignore_headers X-Accel-Buffering",
        "compression": "gzip off, or text/event-stream out of gzip_types",
        "idle_cut": "proxy_read_timeout (and send_timeout) above the heartbeat interval",
        "delay": "tcp_nodelay on; gzip off for text/event-stream",
        "http2": "listen 443 ssl http2 (nginx 1.25.1 and later: http2 on)",
        "length": "proxy_buffering off (it counted the whole body first)",
    },
    "HAProxy": {
        "buffering": "no filter that holds the body (compression, cache) on this backend",
        "compression": "text/event-stream out of `compression type`",
        "idle_cut": "timeout server and timeout client above the heartbeat interval",
        "delay": "option http-no-delay",
        "http2": "alpn h2,http/1.1 on the bind line",
        "length": "no filter that holds the body on this backend",
    },
    "Caddy": {
        "buffering": "reverse_proxy { flush_interval -1 }",
        "compression": "encode: leave text/event-stream out (a `not header Content-Type "
        "text/event-stream*` matcher)",
        "idle_cut": "reverse_proxy { transport http { read_timeout } } above the heartbeat "
        "interval",
        "age_cap": "servers { timeouts { write } }: it caps the whole response",
        "delay": "reverse_proxy { flush_interval -1 }",
        "http2": "on by default over TLS (servers { protocols h1 h2 })",
        "length": "reverse_proxy { flush_interval -1 }",
    },
}

#: What to look for on a proxy doctor cannot name.
GENERIC: dict[Problem, str] = {
    "buffering": "response buffering off (nginx: proxy_buffering off; Caddy: flush_interval "
    "-1; a CDN: no caching or buffering for text/event-stream)",
    "compression": "compression off for text/event-stream (nginx: gzip_types; HAProxy: "
    "compression type; Caddy: encode)",
    "idle_cut": "the idle (read) timeout above the heartbeat interval (nginx: "
    "proxy_read_timeout; HAProxy: timeout server/client; a load balancer: idle timeout)",
    "age_cap": "the maximum connection or stream duration (a load balancer's connection "
    "lifetime, Envoy max_stream_duration, Caddy timeouts write)",
    "delay": "no Nagle-style delay and no compressor holding one event back (HAProxy: option "
    "http-no-delay; nginx: tcp_nodelay on, gzip off for text/event-stream)",
    "comments": "a proxy or CDN that rewrites event streams: pass them through unchanged",
    "http2": "HTTP/2 on the front's TLS listener (nginx: http2; HAProxy: alpn h2,http/1.1; "
    "Caddy: on by default)",
    "length": "response buffering off: something counted the whole body before sending it",
}

#: Lower-case words in Server / Via that identify a proxy.
_MARKS = {"nginx": "nginx", "openresty": "nginx", "haproxy": "HAProxy", "caddy": "Caddy"}


def hops(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """The proxies the headers name, nearest the client first: (proxy, the header that said so)."""
    found: list[tuple[str, str]] = []
    for name in ("Server", "Via"):
        value = _header(headers, name)
        if value is None:
            continue
        # Via lists hops in the order the response passed them: the last is nearest the client.
        parts = reversed(value.split(",")) if name == "Via" else [value]
        for part in parts:
            low = part.lower()
            for mark, proxy in _MARKS.items():
                if mark in low and proxy not in (p for p, _ in found):
                    found.append((proxy, f"{name}: {part.strip()}"))
    return found


def advice(headers: Mapping[str, str], problem: Problem) -> str:
    """Where to look for ``problem``: the named proxies' settings, else the generic hint."""
    named = [(p, said) for p, said in hops(headers) if problem in SETTINGS[p]]
    if not named:
        return GENERIC[problem]
    said = "; ".join(f"{p} ({how}): {SETTINGS[p][problem]}" for p, how in named)
    if problem in ("buffering", "compression", "delay", "idle_cut", "age_cap"):
        # Server names only the hop nearest the client; a quiet one further in may be the cause.
        said += "; if that is not it, a hop that does not name itself"
    return said


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)
