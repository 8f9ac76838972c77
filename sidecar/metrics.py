"""Prometheus metrics (one registry per app, never the global one) and the admin server.

Labels are bounded: route names, outcomes, kinds and reasons from fixed sets.
Never a session key, a path with ids or a client address.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from sidecar import __version__

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_SILENCE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300)

#: Every outcome a stream can end with (the ``outcome`` label).
#: What became of a run whose replica was gone (the ``result`` of run_takeovers_total).
TAKEOVER_RESULTS = ("taken", "followed", "impossible")

OUTCOMES = (
    "completed",  # the upstream's own terminal event
    "upstream_closed",  # clean upstream end without one: event end
    "client_disconnected",
    "slow_client",
    "upstream_status",
    "upstream_unreachable",
    "upstream_refused",  # a gateway refused the handshake (token, pairing, protocol)
    "upstream_disconnected",
    "upstream_timeout",
    "upstream_protocol",
    "upstream_error",  # a gateway reported the run failed
    "upstream_aborted",
    "backend_unavailable",  # a resumable run lost its replay log
    "replaced",
    "shutdown",
    "resume_gap",
    "passthrough",  # non-SSE or error response passed through unchanged
    "rejected",  # refused before streaming: session conflict, backend down
    "abandoned",  # resume: the client did not come back within the grace period
    "stopped",  # a stop request (DELETE with the session key) ended the run
)


#: Every kind of event written to clients (the ``kind`` label of events_total).
EVENT_KINDS = (
    "forwarded",
    "comment_converted",
    "comment_passed",
    "comment_dropped",
    "heartbeat",
    "terminal_synthesized",
    "opening",
    "replayed",
)

#: What an upstream resume ended as (the ``result`` label of upstream_resumes_total).
UPSTREAM_RESUME_RESULTS = ("resumed", "failed", "no_id", "exhausted")


class Metrics:
    """All metric objects of one sidecar process, on their own registry."""

    def __init__(self) -> None:
        # The *_created series double the output for no dashboard's benefit;
        # the switch is process-wide in prometheus-client, and idempotent.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry(auto_describe=True)
        #: Per-route counts not yet in the counters (see Tally).
        self.tallies: list[Tally] = []
        #: Read before every scrape: gauges of state owned elsewhere (backend pools).
        self.samplers: list[Callable[[], None]] = []
        p = "sse_sidecar_"
        # multiprocess_mode only matters with workers > 1 (prometheus-client's
        # multiprocess mode, see sidecar/workers.py): sum over live workers.
        self.active_streams = Gauge(
            p + "active_streams",
            "Streams open right now",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.streams = Counter(
            p + "streams", "Streams ended, by outcome", ["route", "outcome"], registry=r
        )
        self.events = Counter(
            p + "events",
            "Events written to clients, by kind "
            "(forwarded, comment_converted, comment_passed, comment_dropped, heartbeat, "
            "terminal_synthesized, opening, replayed)",
            ["route", "kind"],
            registry=r,
        )
        self.bytes_in = Counter(p + "upstream_bytes", "Bytes read from upstreams", ["route"],
                                registry=r)  # fmt: skip
        self.bytes_out = Counter(p + "client_bytes", "Bytes written to clients", ["route"],
                                 registry=r)  # fmt: skip
        self.ttfb = Histogram(
            p + "upstream_ttfb_seconds",
            "Time from request to the upstream's first body byte",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            p + "stream_duration_seconds", "Stream duration", ["route"],
            buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.max_silence = Histogram(
            p + "upstream_max_silence_seconds",
            "Longest upstream silence in each stream: the heartbeat interval must be below "
            "what every proxy on the path tolerates",
            ["route"],
            buckets=_SILENCE_BUCKETS,
            registry=r,
        )
        self.protocol_errors = Counter(
            p + "upstream_protocol_errors",
            "Malformed upstream streams, by rule broken",
            ["route", "kind"],
            registry=r,
        )
        self.rejected = Counter(
            p + "rejected_requests",
            "Requests refused before a stream started, by reason",
            ["route", "reason"],
            registry=r,
        )
        self.passthrough = Counter(
            p + "passthrough_responses",
            "Upstream responses passed through unchanged (error status or not an event stream)",
            ["route", "status_class"],
            registry=r,
        )
        self.slow_clients = Counter(
            p + "slow_client_disconnects",
            "Clients cut off because one write took longer than limits.write_timeout",
            ["route"],
            registry=r,
        )
        self.session_conflicts = Counter(
            p + "session_conflicts",
            "Requests for a session that already had a live stream, by policy",
            ["route", "policy"],
            registry=r,
        )
        self.run_takeovers = Counter(
            p + "run_takeovers",
            "Runs whose replica was gone, found by a client here: taken over, followed "
            "(alive, or another replica took it), or impossible (nothing to resume it with)",
            ["route", "result"],
            registry=r,
        )
        self.resume = Counter(
            p + "resume", "Reconnects with Last-Event-ID, by result", ["route", "result"],
            registry=r,
        )  # fmt: skip
        self.upstream_resumes = Counter(
            p + "upstream_resumes",
            "Upstream resumes (upstream_resume): attempts that resumed or failed, and breaks "
            "that could not resume (no_id) or ran out of attempts (exhausted)",
            ["route", "result"],
            registry=r,
        )
        self.upstream_after_client = Histogram(
            p + "upstream_after_client_gone_seconds",
            "Seconds the upstream request stayed open after the client had gone",
            ["route"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.replay_evictions = Counter(
            p + "replay_evictions",
            "Resume buffers trimmed to stay under replay_max_bytes, by what went",
            ["kind"],
            registry=r,
        )
        self.backend_up = Gauge(
            p + "backend_up",
            "1 when the session/replay backend answers",
            ["backend"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.backend_connections = Gauge(
            p + "backend_connections",
            "Connections to the backend by pool and state (open, in_use, max: the configured cap)",
            ["pool", "state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.draining = Gauge(
            p + "draining",
            "1 while the process drains for shutdown",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.open_connections = Gauge(
            p + "open_connections",
            "Client connections open on the stream port",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.refused_connections = Counter(
            p + "refused_connections",
            "Client connections refused or closed before a request, by reason "
            "(max_connections, evicted, head_timeout)",
            ["reason"],
            registry=r,
        )
        self.bad_requests = Counter(
            p + "bad_requests",
            "Requests answered with 400/431 before routing, by reason (malformed, head_too_large)",
            ["reason"],
            registry=r,
        )
        self.client_headers_dropped = Counter(
            p + "client_headers_dropped",
            "Client headers not believed, by kind (forwarding: from an untrusted peer; "
            "request_id: too long or odd characters, replaced)",
            ["route", "kind"],
            registry=r,
        )
        self.cors_preflights = Counter(
            p + "cors_preflights",
            "CORS preflights answered, by result (allowed, refused)",
            ["route", "result"],
            registry=r,
        )
        # A gauge rather than an Info: Info does not work across worker processes.
        Gauge(
            p + "build_info",
            "Build information",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        ).labels(__version__).set(1)

    def init_route(self, route: str) -> None:
        """Create every labelled child at 0 so rates and dashboards work from the start."""
        self.active_streams.labels(route)
        for outcome in OUTCOMES:
            self.streams.labels(route, outcome)
        for kind in EVENT_KINDS:
            self.events.labels(route, kind)
        for policy in ("replace", "reject"):
            self.session_conflicts.labels(route, policy)
        for result in TAKEOVER_RESULTS:
            self.run_takeovers.labels(route, result)
        for result in ("hit", "gap", "miss", "forbidden"):
            self.resume.labels(route, result)
        for result in UPSTREAM_RESUME_RESULTS:
            self.upstream_resumes.labels(route, result)
        self.bytes_in.labels(route)
        self.bytes_out.labels(route)
        self.slow_clients.labels(route)

    def flush(self) -> None:
        """Add the routes' tallies to their counters (once a second, and before a scrape)."""
        for tally in self.tallies:
            tally.flush()
        for sample in self.samplers:
            sample()

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)


class RouteMetrics:
    """The labelled children of one route, resolved once instead of per event."""

    def __init__(self, metrics: Metrics, route: str) -> None:
        metrics.init_route(route)
        self.metrics = metrics
        self.route = route
        self.active = metrics.active_streams.labels(route)
        self.bytes_in = metrics.bytes_in.labels(route)
        self.bytes_out = metrics.bytes_out.labels(route)
        self.ttfb = metrics.ttfb.labels(route)
        self.duration = metrics.duration.labels(route)
        self.max_silence = metrics.max_silence.labels(route)
        self.after_client = metrics.upstream_after_client.labels(route)
        self.forwarded = metrics.events.labels(route, "forwarded")
        self.converted = metrics.events.labels(route, "comment_converted")
        self.heartbeat = metrics.events.labels(route, "heartbeat")
        #: What the route's streams count per read (see Tally).
        self.counts = Tally(self)
        metrics.tallies.append(self.counts)

    def event(self, kind: str, n: int = 1) -> None:
        self.metrics.events.labels(self.route, kind).inc(n)

    def outcome(self, outcome: str) -> None:
        self.metrics.streams.labels(self.route, outcome).inc()

    def rejected(self, reason: str) -> None:
        self.metrics.rejected.labels(self.route, reason).inc()

    def upstream_resume(self, result: str) -> None:
        self.metrics.upstream_resumes.labels(self.route, result).inc()


class Tally:
    """A route's counts not yet added to Prometheus: plain ints, bumped per read.

    A counter update takes a lock, and the streams of a route forward
    thousands of events a second; they add to these ints instead, and
    :meth:`Metrics.flush` moves them to the counters once a second and
    before every scrape.
    """

    __slots__ = ("_metrics", "bytes_in", "bytes_out", "forwarded", "heartbeats")

    def __init__(self, metrics: RouteMetrics) -> None:
        self._metrics = metrics
        self.bytes_in = 0
        self.bytes_out = 0
        self.forwarded = 0
        self.heartbeats = 0

    def flush(self) -> None:
        m = self._metrics
        if self.bytes_in:
            m.bytes_in.inc(self.bytes_in)
            self.bytes_in = 0
        if self.bytes_out:
            m.bytes_out.inc(self.bytes_out)
            self.bytes_out = 0
        if self.forwarded:
            m.forwarded.inc(self.forwarded)
            self.forwarded = 0
        if self.heartbeats:
            m.heartbeat.inc(self.heartbeats)
            self.heartbeats = 0


# --- admin server ----------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_app(
    render: Callable[[], bytes], ready: Callable[[], tuple[bool, str]], token: str | None
) -> web.Application:
    """``/metrics``, ``/healthz`` (alive) and ``/readyz`` (taking new streams)."""

    async def healthz(_: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.StreamResponse:
        ok, why = ready()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.StreamResponse:
        resp = web.Response(body=render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    @web.middleware
    async def bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Probes need no secret: /healthz and /readyz say nothing sensitive.
        if token is not None and request.path not in ("/healthz", "/readyz"):
            # Header values arrive decoded with surrogateescape; encoding them
            # back the same way gives the bytes sent, whatever they are.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, f"Bearer {token}".encode()):
                return web.json_response(
                    {"error": {"code": "unauthorized", "message": "bearer token required"}},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    app = web.Application(middlewares=[bearer])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
