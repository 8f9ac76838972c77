"""A stream's claim on its session: owned, or the answer that refuses the request.

The route's session policy (reject or replace) decides who keeps a session
two streams want, and a replace must come with the live stream's credentials
(``session.bind``); when the session backend cannot be reached, the
``backend.on_outage`` setting decides whether the stream runs unguarded. The run
(sidecar/stream/run.py) holds the claim and releases it when the stream ends.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from sidecar.client import json_error
from sidecar.context import StreamHandle
from sidecar.errors import BackendUnavailable, SessionConflict, SessionForbidden
from sidecar.replay.base import FORBIDDEN
from sidecar.services import RouteServices
from sidecar.sessions.base import Claim
from sidecar.sessions.binding import CredentialedRequest
from sidecar.stream.state import StreamState

log = structlog.get_logger("sse_sidecar")


async def claim_session(
    services: RouteServices,
    state: StreamState,
    handle: StreamHandle,
    key: str,
    request: CredentialedRequest,
    *,
    taken_over: bool,
) -> Claim | web.Response | None:
    """Own session ``key`` for the stream ``handle``, bound to ``request``'s credentials.

    Returns the claim; or the answer that refuses this request; or None when
    the backend is out and the process lets streams run without a claim.
    ``taken_over``: the stream continues a dead replica's run.
    """
    ctx = services.ctx
    route = services.route
    # A run taken over continues a dead replica's run: a stream that holds
    # the session meanwhile is newer, and it keeps the session.
    policy = "reject" if taken_over else route.session.policy
    try:
        binding = services.credentials_of(request, key)
        claim = await ctx.sessions.claim(route.name, key, policy, handle, binding)
    except SessionConflict as exc:
        state.outcome = "rejected"
        ctx.metrics.session_conflicts.labels(route.name, "reject").inc()
        return json_error(409, exc.code, str(exc))
    except SessionForbidden:
        # The live stream goes on untouched: not a conflict, a refusal.
        state.outcome = "rejected"
        return forbidden(services)
    except BackendUnavailable as exc:
        if ctx.config.backend.on_outage == "allow":
            log.warning("session_unguarded", route=route.name, reason=str(exc))
            services.metrics.rejected("backend_unavailable_allowed")
            return None
        state.outcome = "rejected"
        services.metrics.rejected("backend_unavailable")
        return json_error(503, exc.code, str(exc), **{"Retry-After": "1"})
    if claim.replaced:
        ctx.metrics.session_conflicts.labels(route.name, "replace").inc()
    return claim


def forbidden(services: RouteServices) -> web.Response:
    """The answer to a request with other credentials than the session's stream (``session.bind``).

    A replace, a stop, or on resume routes a reconnect: refused, and counted.
    """
    services.metrics.rejected(SessionForbidden.code)
    return json_error(403, SessionForbidden.code, FORBIDDEN)
