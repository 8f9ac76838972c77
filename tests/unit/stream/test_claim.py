"""A stream's claim on its session (sidecar/stream/claim.py): owned, or refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from sidecar.config import from_mapping
from sidecar.context import Context, StreamHandle
from sidecar.errors import BackendUnavailable
from sidecar.metrics import Metrics
from sidecar.replay.memory import MemoryReplayStore
from sidecar.services import RouteServices
from sidecar.sessions.base import Claim, Holder, Policy
from sidecar.sessions.memory import MemorySessionStore
from sidecar.stream.claim import claim_session
from sidecar.stream.state import StreamState


class OutOfReach(MemorySessionStore):
    """A session backend that cannot be reached."""

    async def claim(
        self, route: str, key: str, policy: Policy, holder: Holder, binding: str = ""
    ) -> Claim:
        raise BackendUnavailable("redis unreachable")


class Request:
    """The parts of a request its credentials are read from."""

    def __init__(self, authorization: str | None = "Bearer alice") -> None:
        # Case-insensitive, as aiohttp's: the binding reads "authorization".
        self.headers = CIMultiDict(
            {} if authorization is None else {"Authorization": authorization}
        )
        self.cookies: dict[str, str] = {}


ALICE = Request()


def services_for(
    policy: str = "replace", on_outage: str = "reject", store: MemorySessionStore | None = None
) -> RouteServices:
    config = from_mapping(
        {
            "backend": {"on_outage": on_outage},
            "routes": [
                {
                    "name": "chat",
                    "path": "/chat",
                    "upstream": "http://127.0.0.1:1",
                    "session": {"policy": policy},
                }
            ],
        }
    )
    # Not ``store or ...``: an empty store is falsy (it has a length).
    sessions = MemorySessionStore(replace_wait=0.01) if store is None else store
    ctx = Context(config, Metrics(), sessions, MemoryReplayStore())
    return RouteServices(config.routes[0], ctx)


def new_state(services: RouteServices) -> StreamState:
    return StreamState(services.metrics, 0.0, stream_id="s", request_id="r", session_key="k")


def sample(services: RouteServices, name: str, **labels: str) -> float | None:
    metrics = services.ctx.metrics
    metrics.flush()
    return metrics.registry.get_sample_value(name, {"route": "chat", **labels})


def body(response: web.Response) -> Any:
    assert isinstance(response.body, bytes)
    return json.loads(response.body)


async def test_a_free_session_is_owned_by_the_stream() -> None:
    services = services_for()
    state = new_state(services)
    handle = StreamHandle("s1", "chat")
    claim = await claim_session(services, state, handle, "k", ALICE, taken_over=False)
    assert isinstance(claim, Claim)
    assert (claim.route, claim.key, claim.holder, claim.replaced) == ("chat", "k", handle, False)
    assert state.outcome == "client_disconnected"  # untouched: the stream goes on


async def test_reject_refuses_a_second_stream_with_409() -> None:
    services = services_for(policy="reject")
    first = new_state(services)
    await claim_session(services, first, StreamHandle("s1", "chat"), "k", ALICE, taken_over=False)
    second = new_state(services)
    refused = await claim_session(
        services,
        second,
        StreamHandle("s2", "chat"),
        "k",
        Request("Bearer mallory"),
        taken_over=False,
    )
    assert isinstance(refused, web.Response)
    assert refused.status == 409
    assert body(refused)["error"]["code"] == "session_conflict"
    assert second.outcome == "rejected"
    conflicts = "sse_sidecar_session_conflicts_total"
    assert sample(services, conflicts, policy="reject") == 1.0


async def test_replace_stops_the_older_stream_and_counts_it() -> None:
    services = services_for(policy="replace")
    older = StreamHandle("s1", "chat", asyncio.create_task(asyncio.sleep(10)))
    try:
        await claim_session(services, new_state(services), older, "k", ALICE, taken_over=False)
        newer = StreamHandle("s2", "chat")
        claim = await claim_session(
            services, new_state(services), newer, "k", ALICE, taken_over=False
        )
        assert isinstance(claim, Claim)
        assert claim.replaced
        assert older.stop_code == "replaced"
        conflicts = "sse_sidecar_session_conflicts_total"
        assert sample(services, conflicts, policy="replace") == 1.0
    finally:
        assert older.task is not None
        older.task.cancel()


async def test_a_run_taken_over_never_replaces_the_stream_that_holds_the_session() -> None:
    # The route replaces, but a stream that holds the session meanwhile is newer.
    services = services_for(policy="replace")
    holder = StreamHandle("s1", "chat", asyncio.create_task(asyncio.sleep(10)))
    try:
        await claim_session(services, new_state(services), holder, "k", ALICE, taken_over=False)
        state = new_state(services)
        taken = StreamHandle("s2", "chat")
        refused = await claim_session(services, state, taken, "k", ALICE, taken_over=True)
        assert isinstance(refused, web.Response)
        assert refused.status == 409
        assert holder.stop_code is None
        assert state.outcome == "rejected"
    finally:
        assert holder.task is not None
        holder.task.cancel()


@pytest.mark.parametrize(
    ("on_outage", "refused", "reason"),
    [("reject", True, "backend_unavailable"), ("allow", False, "backend_unavailable_allowed")],
)
async def test_an_unreachable_backend_refuses_or_lets_the_stream_run_unguarded(
    on_outage: str, refused: bool, reason: str
) -> None:
    services = services_for(on_outage=on_outage, store=OutOfReach())
    state = new_state(services)
    got = await claim_session(
        services, state, StreamHandle("s1", "chat"), "k", ALICE, taken_over=False
    )
    if refused:
        assert isinstance(got, web.Response)
        assert (got.status, got.headers["Retry-After"]) == (503, "1")
        assert body(got)["error"]["code"] == "backend_unavailable"
        assert state.outcome == "rejected"
    else:
        assert got is None  # no claim, and no refusal: the stream runs
        assert state.outcome == "client_disconnected"
    assert sample(services, "sse_sidecar_rejected_requests_total", reason=reason) == 1.0


@pytest.mark.parametrize("other", [Request("Bearer mallory"), Request(None)])
async def test_replace_with_other_credentials_is_refused_with_403(other: Request) -> None:
    services = services_for(policy="replace")
    older = StreamHandle("s1", "chat", asyncio.create_task(asyncio.sleep(10)))
    try:
        await claim_session(services, new_state(services), older, "k", ALICE, taken_over=False)
        state = new_state(services)
        newer = StreamHandle("s2", "chat")
        refused = await claim_session(services, state, newer, "k", other, taken_over=False)
        assert isinstance(refused, web.Response)
        assert refused.status == 403
        assert body(refused)["error"]["code"] == "session_forbidden"
        assert older.stop_code is None  # the live stream goes on
        assert state.outcome == "rejected"
        rejected = "sse_sidecar_rejected_requests_total"
        assert sample(services, rejected, reason="session_forbidden") == 1.0
        conflicts = "sse_sidecar_session_conflicts_total"
        assert not sample(services, conflicts, policy="replace")
    finally:
        assert older.task is not None
        older.task.cancel()
