"""The stop request: ``DELETE`` on a route's path with the session key ends its run now.

Stop is not leave: a client that disconnects may come back within
``resume.grace``; a user who pressed stop wants the run over. The session's
owner (in this process or, with Redis, on whichever replica holds it) ends
its stream with ``event: end`` / reason ``stopped`` (in the route's dialect),
which closes the upstream and ends every follower. The request must carry
the credentials the session's stream is bound to (``session.bind``): a
session key alone is no secret.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.client import json_error
from sidecar.errors import BackendUnavailable, BadSessionKey, SessionForbidden
from sidecar.resume.entry import ResumeEntry
from sidecar.services import RouteServices
from sidecar.sessions.binding import same_credentials
from sidecar.sessions.keys import SessionKeySource
from sidecar.stream.claim import forbidden


async def handle(
    services: RouteServices,
    keys: SessionKeySource,
    resume: ResumeEntry | None,
    request: web.Request,
) -> web.Response:
    """Answer a stop request: 202 when a run was told to stop, else a JSON error."""
    metrics = services.metrics
    try:
        key = keys.of_request(request)
    except BadSessionKey as exc:
        metrics.rejected("bad_session_key")
        return json_error(400, exc.code, str(exc))
    if key is None:
        metrics.rejected("stop_without_key")
        return json_error(400, "missing_session_key", "a stop request needs the session key")
    route, ctx = services.route.name, services.ctx
    presented = services.credentials_of(request, key)
    try:
        if resume is not None and resume.binding.enabled:
            replay_log = await ctx.replay.find(route, key)
            if replay_log is not None and not same_credentials(replay_log.binding, presented):
                return resume.forbidden()
        stopped = await ctx.sessions.stop(route, key, presented)
    except SessionForbidden:
        return resume.forbidden() if resume is not None else forbidden(services)
    except BackendUnavailable as exc:
        metrics.rejected("backend_unavailable")
        return json_error(503, exc.code, str(exc), **{"Retry-After": "1"})
    if not stopped:
        metrics.rejected("stop_no_run")
        return json_error(404, "no_run", "this session has no running stream on this route")
    return web.json_response({"stopped": True}, status=202)
