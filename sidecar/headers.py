"""Which headers cross the proxy, in each direction (pure; RFC 9110 §7.6.1).

Hop-by-hop headers, and every header the ``Connection`` header names, belong
to one connection and are never forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy, istr

from sidecar.forwarding import FORWARDING, forwarding_headers

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Request headers the sidecar sets itself for the upstream.
_REQUEST_OWN = frozenset({"host", "content-length", "accept-encoding", "expect"})

#: Response headers the sidecar sets itself on a stream it normalises.
STREAM_OWN = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "cache-control",
        "x-accel-buffering",
        "etag",
        "last-modified",
    }
)

# The names of the headers a stream's response gets from us are istr, made
# once: a response's CIMultiDict keeps an istr name as it is, but makes (and
# keeps, for the response's life) an istr of each plain str name when
# aiohttp serialises the head, ~0.1 KiB a name for every stream.
CONTENT_TYPE = istr("Content-Type")
CACHE_CONTROL = istr("Cache-Control")
X_ACCEL_BUFFERING = istr("X-Accel-Buffering")
X_REQUEST_ID = istr("X-Request-ID")
CONNECTION = istr("Connection")

#: What every normalised stream is sent with (DESIGN.md, "The normalised stream").
STREAM_HEADERS = {
    CONTENT_TYPE: "text/event-stream; charset=utf-8",
    CACHE_CONTROL: "no-cache, no-transform",
    X_ACCEL_BUFFERING: "no",
}

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def _connection_listed(headers: Headers) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        listed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return listed


def strip(headers: Headers, also: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, Connection-listed ones and ``also``."""
    drop = HOP_BY_HOP | _connection_listed(headers) | {name.lower() for name in also}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def upstream_request(
    headers: Headers,
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    request_id: str,
    local: str | None = None,
    trusted: bool = False,
) -> CIMultiDict[str]:
    """Headers for the upstream request made on behalf of a client request.

    The client's forwarding headers are dropped and set again from the
    connection, unless ``trusted`` (the peer is a trusted proxy, sidecar/forwarding.py).
    """
    out = strip(headers, _REQUEST_OWN | {n.lower() for n in FORWARDING} | {"x-request-id"})
    # The stream must come uncompressed: a compressed stream is buffered by
    # the compressor and arrives as one late blob (DESIGN.md failure 7).
    out["Accept-Encoding"] = "identity"
    out.extend(
        forwarding_headers(
            headers, peer=peer, scheme=scheme, local=local, host=host, trusted=trusted
        )
    )
    out["X-Request-ID"] = request_id
    return out


def passthrough_response(headers: Headers) -> CIMultiDict[str]:
    """Headers of an upstream response passed through unchanged (body re-framed by us).

    The body is passed on as the upstream encoded it, so Content-Encoding stays.
    """
    return strip(headers, ("content-length",))


def stream_kept(headers: Headers | None) -> CIMultiDict[str] | None:
    """What a stream's response keeps of the upstream's headers (None: nothing).

    ``stream_response`` of it is ``stream_response`` of ``headers``: a run
    that answers followers for its whole life holds this, not the whole head.
    """
    if headers is None:
        return None
    return strip(headers, STREAM_OWN) or None


def stream_response(headers: Headers | None) -> CIMultiDict[str]:
    """Headers of a normalised stream: the upstream's safe ones, then ours."""
    out = strip(headers, STREAM_OWN) if headers is not None else CIMultiDict[str]()
    out.update(STREAM_HEADERS)
    return out
