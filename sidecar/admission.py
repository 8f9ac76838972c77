"""What a route checks of a request before any stream: its path, its origin, its headers.

The aiohttp side of the pure rules in sidecar/paths.py (prefix and climbing),
sidecar/cors.py (origins, preflights) and sidecar/forwarding.py (forwarding
headers, request ids), for :class:`sidecar.proxy.RouteProxy`. CORS headers
reach every response of a request, streams included, through aiohttp's
``on_response_prepare`` signal (:func:`add_cors_headers`), so no write path
needs to know about them.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar import headers as hdrs
from sidecar.client import json_error
from sidecar.config import Route
from sidecar.cors import Cors, Decision, same_origin, without_cors
from sidecar.forwarding import FORWARDING, TrustedProxies, request_id
from sidecar.metrics import RouteMetrics
from sidecar.paths import BadPath, upstream_tail

#: Where a request's CORS decision waits for its response to be prepared.
_CORS = web.RequestKey("sse_sidecar_cors", Decision)


class Admission:
    """One route's checks, prepared once."""

    def __init__(self, route: Route, trusted: TrustedProxies, metrics: RouteMetrics) -> None:
        self.route = route
        self.trusted = trusted
        self.metrics = metrics
        self.base = URL(route.upstream)
        self.prefix = route.path.rstrip("/")
        kind, _, name = route.session.from_.partition(":")
        self.cookie_keyed = kind == "cookie"
        self.cors = (
            Cors(route.cors, name if kind == "header" else None, route.methods)
            if route.cors is not None
            else None
        )

    # --- the path ------------------------------------------------------------

    def upstream_url(self, request: web.Request) -> URL:
        """The upstream URL: the raw tail after the prefix and the raw query, byte for byte.

        Raises BadPath for a path that is not under the prefix as decoded, or climbs.
        """
        tail = upstream_tail(request.rel_url.raw_path, self.prefix)
        path = self.base.raw_path.rstrip("/") + tail or "/"
        query = request.rel_url.raw_query_string
        # encoded=True: yarl would re-quote every % of the query (%20 -> %2520).
        return URL.build(
            scheme=self.base.scheme,
            authority=self.base.raw_authority,
            path=path,
            query_string=query,
            encoded=True,
        )

    def bad_path(self, exc: BadPath) -> web.Response:
        self.metrics.rejected("bad_path")
        return json_error(400, "bad_path", str(exc))

    # --- the origin ----------------------------------------------------------

    def check_origin(self, request: web.Request) -> web.Response | None:
        """A preflight's answer, a refused origin's 403, or None to go on."""
        origin = request.headers.get("Origin")
        if self.cors is None:
            if self.cookie_keyed and origin is not None and not same_origin(origin, request.host):
                # A cross-site page could start or replace a user's stream
                # with the user's cookie; without cors: only its own origin may.
                return self._refuse_origin(origin)
            return None
        method = request.headers.get("Access-Control-Request-Method")
        if request.method == "OPTIONS" and origin is not None and method is not None:
            ok, headers = self.cors.preflight(
                origin, method, request.headers.get("Access-Control-Request-Headers", "")
            )
            self.metrics.metrics.cors_preflights.labels(
                self.route.name, "allowed" if ok else "refused"
            ).inc()
            if not ok:
                return json_error(
                    403,
                    "origin_not_allowed",
                    "this origin, method or header is not allowed by the route's cors",
                    **headers,
                )
            return web.Response(status=204, headers=headers)
        decision = self.cors.decide(origin, request.host)
        request[_CORS] = decision
        if not decision.allowed:
            assert origin is not None  # only a present origin can be refused
            return self._refuse_origin(origin)
        return None

    def _refuse_origin(self, origin: str) -> web.Response:
        self.metrics.rejected("origin_not_allowed")
        return json_error(
            403,
            "origin_not_allowed",
            f"origin {origin[:100]!r} may not use this route",
            Vary="Origin",
        )

    # --- the headers ---------------------------------------------------------

    def request_id(self, request: web.Request, fresh: str | None = None) -> str:
        given = request.headers.get("X-Request-ID")
        chosen = request_id(given, fresh)
        if given is not None and chosen != given:
            self.metrics.metrics.client_headers_dropped.labels(self.route.name, "request_id").inc()
        return chosen

    def upstream_headers(self, request: web.Request, rid: str) -> CIMultiDict[str]:
        peer = request.remote
        trusted = self.trusted.trusts(peer)
        if not trusted and any(name in request.headers for name in FORWARDING):
            self.metrics.metrics.client_headers_dropped.labels(self.route.name, "forwarding").inc()
        return hdrs.upstream_request(
            request.headers,
            peer=peer,
            scheme=request.scheme,
            host=request.host,
            request_id=rid,
            local=_local_address(request),
            trusted=trusted,
        )


def _local_address(request: web.Request) -> str | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return None
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: a route with ``cors:`` sets its own CORS headers.

    The upstream's own are removed then; a route without ``cors:`` passes them through.
    """
    decision = request.get(_CORS)
    if decision is None:
        return  # a route without cors: the upstream's own pass through
    for name in without_cors(response.headers):
        del response.headers[name]
    for name, value in decision.headers.items():
        if name == "Vary" and "Vary" in response.headers:
            if "origin" not in response.headers["Vary"].lower():
                response.headers["Vary"] = f"{response.headers['Vary']}, {value}"
            continue
        response.headers[name] = value
