"""What every stream of one route shares: its config, the process, the normaliser, metrics.

Built once per route (sidecar/proxy.py) and handed to the streams, runs and
followers of that route, so none of them reaches through the handler.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.admission import Admission
from sidecar.config import Route
from sidecar.context import Context
from sidecar.dialects import dialect_for
from sidecar.forwarding import TrustedProxies
from sidecar.metrics import RouteMetrics
from sidecar.normalize import Normalizer
from sidecar.sessions.binding import CredentialBinding, CredentialedRequest
from sidecar.stream.pacing import Pacing


class RouteServices:
    """The per-route parts a stream needs (config, context, normaliser, metrics)."""

    __slots__ = (
        "_pacing", "admission", "binding", "ctx", "metrics", "normalizer", "raw_events", "route",
    )  # fmt: skip

    def __init__(self, route: Route, ctx: Context) -> None:
        self.route = route
        self.ctx = ctx
        self.normalizer = Normalizer(
            route.comments, route.keepalive, route.terminal, dialect_for(route)
        )
        #: The fast path's test (built once: every stream of the route shares it).
        self.raw_events: Callable[[bytes], int] = self.normalizer.raw_events(route.limits)
        self.metrics = RouteMetrics(ctx.metrics, route.name)
        #: Path, origin and header checks (sidecar/admission.py).
        self.admission = Admission(
            route, TrustedProxies.parse(ctx.config.trusted_proxies), self.metrics
        )
        #: With heartbeats and without (a Sink whose reader heartbeats): frozen,
        #: so every stream and follower of the route shares them rather than
        #: holding one each for its life.
        self._pacing = (
            Pacing.of(route.limits, 0.0),
            Pacing.of(route.limits, route.heartbeat.interval),
        )
        #: The credentials the route's sessions are bound to (``session.bind``).
        self.binding = CredentialBinding(route.bind)

    def pacing(self, heartbeats: bool = True) -> Pacing:
        """The route's limits, and its heartbeat interval if ``heartbeats``."""
        return self._pacing[heartbeats]

    def credentials_of(self, request: CredentialedRequest, key: str) -> str:
        """The fingerprint of a request's credentials for session ``key`` of this route."""
        return self.binding.of_request(self.route.name, key, request)
