"""The probe route: a diagnostic event stream the sidecar serves itself, for ``doctor``.

Strategy: send the normalised stream headers, a ``probe`` event (with the
server's clock, so doctor can use the send stamps when the clocks agree), a
comment line (a chain that strips comments shows), a burst of timestamped
``tick`` events, then nothing at all (not even a heartbeat) for up
to ``silence`` seconds, then ``probe_end``. What the client sees of that
(arrival spacing, encoding, when the silent stream is cut) describes the chain
in front of the sidecar; sidecar/doctor/ draws the conclusions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

from aiohttp import web

from sidecar import forwarding
from sidecar.client import client_write, json_error, start_response
from sidecar.context import CONTEXT
from sidecar.errors import ClientGone

DEFAULT_PATH = "/_sse-sidecar/probe"

#: How often the silent phase checks whether the client is still there. aiohttp
#: cancels the handler on disconnect only with ``handler_cancellation=True``.
POLL = 0.1
#: A client that does not take one small write within this long is gone.
WRITE_TIMEOUT = 10.0


class _Param:
    """One query parameter: default and bounds (the route is public, so all are capped)."""

    def __init__(self, default: float, low: float, high: float, *, integer: bool = False) -> None:
        self.default = default
        self.low = low
        self.high = high
        self.integer = integer


PARAMS = {
    "events": _Param(20, 0, 1000, integer=True),
    "interval": _Param(0.25, 0.0, 10.0),
    # Longer than any sensible cut-off to find, short enough not to hold a
    # connection for long; values above the cap are clamped, not refused.
    "silence": _Param(120.0, 0.0, 600.0),
    "size": _Param(0, 0, 64 * 1024, integer=True),
}


class BadParam(ValueError):
    pass


def parse_params(query: dict[str, str]) -> dict[str, float]:
    """Probe parameters from the query string; raises :class:`BadParam` naming the bad one."""
    out: dict[str, float] = {}
    for name, spec in PARAMS.items():
        raw = query.get(name)
        if raw is None or raw == "":
            out[name] = spec.default
            continue
        try:
            value = float(int(raw)) if spec.integer else float(raw)
        except ValueError:
            kind = "an integer" if spec.integer else "a number of seconds"
            raise BadParam(f"{name} must be {kind}, not {raw!r}") from None
        if not math.isfinite(value) or value < spec.low:
            raise BadParam(f"{name} must be at least {spec.low:g}, not {raw!r}")
        out[name] = min(value, spec.high)
    return out


#: Sent right after the probe event; doctor checks that it arrives.
COMMENT = b": sse-sidecar probe comment\n\n"


def _event(kind: str, payload: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _sleep_until(request: web.Request, deadline: float) -> None:
    """Sleep until ``deadline`` (loop time); raise ClientGone as soon as the client leaves."""
    loop = asyncio.get_running_loop()
    while (left := deadline - loop.time()) > 0:
        if _gone(request):
            raise ClientGone("client left the probe")
        await asyncio.sleep(min(left, POLL))
    if _gone(request):
        raise ClientGone("client left the probe")


#: Probes running at once on one process; more get 503.
MAX_CONCURRENT = 4


def add_probe_route(
    app: web.Application, path: str = DEFAULT_PATH, heartbeat_interval: float = 15.0
) -> None:
    """Register GET ``path`` on ``app``: the diagnostic stream ``sse-sidecar doctor`` reads.

    ``heartbeat_interval`` is what the probe tells the doctor the routes use
    (the doctor checks it against the chain's cut-off). Register it before a
    route whose prefix would also match ``path``: aiohttp tries routes in order.
    """

    active = 0

    async def probe(request: web.Request) -> web.StreamResponse:
        nonlocal active
        ctx = request.app.get(CONTEXT)
        if ctx is not None and ctx.draining:
            return json_error(503, "draining", "the server is shutting down")
        # The probe is on the public port and holds a connection for minutes:
        # a handful at once is all a diagnosis needs.
        if active >= MAX_CONCURRENT:
            return json_error(
                503, "probe_busy", f"{MAX_CONCURRENT} probes are running; try again later"
            )
        active += 1
        try:
            return await _probe(request)
        finally:
            active -= 1

    async def _probe(request: web.Request) -> web.StreamResponse:
        try:
            params = parse_params(dict(request.query))
        except BadParam as exc:
            return json_error(400, "bad_probe_parameter", str(exc))
        request_id = forwarding.request_id(request.headers.get("X-Request-ID"))
        try:
            # The proxy's own header code, so the doctor sees exactly what a stream gets.
            response = await start_response(request, None, request_id)
        except ClientGone:
            return web.StreamResponse()  # nobody left to answer; aiohttp drops it quietly
        # The client (or the chain in front) may leave at any time: the silence
        # test is meant to provoke exactly that.
        with contextlib.suppress(ClientGone):
            await _serve(request, response, params, heartbeat_interval)
        return response

    app.router.add_get(path, probe, allow_head=False)


async def _serve(
    request: web.Request,
    response: web.StreamResponse,
    params: dict[str, float],
    heartbeat_interval: float,
) -> None:
    """Write the probe's events; raises ClientGone when the client leaves."""
    loop = asyncio.get_running_loop()

    async def send(data: bytes) -> None:
        await client_write(request, response, data, WRITE_TIMEOUT)

    events, interval = int(params["events"]), params["interval"]
    silence = params["silence"]
    pad = "x" * int(params["size"])
    await send(
        _event(
            "probe",
            {
                "heartbeat_interval": heartbeat_interval,
                "server_time": time.time(),
                "events": events,
                "interval": interval,
                "silence": silence,
                # The comment line below: a chain that strips comments shows.
                "comment": True,
            },
        )
        + COMMENT
    )
    # Ticks keep to a fixed schedule (no drift from write times), the first at once.
    start = loop.time()
    for n in range(events):
        await _sleep_until(request, start + n * interval)
        tick: dict[str, object] = {"n": n, "sent": time.time()}
        if pad:
            tick["pad"] = pad
        await send(_event("tick", tick))
    # The point of the probe: total silence, so whatever cuts idle streams shows.
    await _sleep_until(request, loop.time() + silence)
    await send(_event("probe_end", {"silence": silence, "server_time": time.time()}))
    await response.write_eof()
