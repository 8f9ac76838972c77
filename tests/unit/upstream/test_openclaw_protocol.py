"""The OpenClaw handshake and the shared connection's routing, against recorded frames.

Frames below were recorded from openclaw 2026.9.6 on loopback (trimmed of
fields the bridge does not read); see shared/openclaw-gateway.md.
"""

from __future__ import annotations

import json

import pytest

from sidecar.errors import GatewayRefused, UpstreamAborted, UpstreamDisconnected
from sidecar.upstream.gateway import GatewayConnection, GatewayRun
from sidecar.upstream.gateway_runs import GatewayRunSource
from sidecar.upstream.openclaw import (
    Handshake,
    abort_frame,
    closed_refusal,
    connect_frame,
    hello_result,
)
from sidecar.upstream.ws_profile import WebSocketProfile

CHALLENGE = {
    "type": "event",
    "event": "connect.challenge",
    "payload": {"nonce": "b6e66991-a766-44f6-bff2-bcd14b85ee88", "ts": 1796163679799},
}
HELLO_OK = {
    "type": "res",
    "id": "connect-1",
    "ok": True,
    "payload": {
        "type": "hello-ok",
        "protocol": 4,
        "policy": {"maxPayload": 26214400, "tickIntervalMs": 30000},
    },
}
TOKEN_MISMATCH = {
    "type": "res",
    "id": "connect-1",
    "ok": False,
    "error": {
        "code": "INVALID_REQUEST",
        "message": "unauthorized: gateway token mismatch",
        "details": {"code": "AUTH_TOKEN_MISMATCH"},
    },
}
NOT_PAIRED = {
    "type": "res",
    "id": "connect-1",
    "ok": False,
    "error": {"code": "NOT_PAIRED", "message": "device identity required"},
}
ACCEPTED = {
    "type": "res",
    "id": "agent-r-1",
    "ok": True,
    "payload": {
        "runId": "k1",
        "sessionKey": "agent:main:mysess",
        "agentId": "main",
        "status": "accepted",
    },
}


def chat(run_id: str, state: str, text: str, **extra: object) -> dict[str, object]:
    payload = {
        "runId": run_id,
        "sessionKey": f"agent:main:{run_id}s",
        "agentId": "main",
        "state": state,
        "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
    }
    if run_id == "k1":
        payload["sessionKey"] = "agent:main:mysess"
    return {"type": "event", "event": "chat", "payload": {**payload, **extra}}


def test_connect_frame_is_what_the_gateway_accepts():
    frame = connect_frame(Handshake(), "s3cret", "connect-1", tools=True)
    assert frame == {
        "type": "req", "id": "connect-1", "method": "connect",
        "params": {"minProtocol": 4, "maxProtocol": 4,
                   "client": {"id": "gateway-client", "version": "0.1.0",
                              "platform": "linux", "mode": "backend"},
                   "role": "operator", "scopes": ["operator.read", "operator.write"],
                   "caps": ["tool-events"], "auth": {"token": "s3cret"}},
    }  # fmt: skip
    assert connect_frame(Handshake(), None, "c", tools=False)["params"]["caps"] == []
    assert "auth" not in connect_frame(Handshake(), None, "c", tools=False)["params"]


def test_hello_ok_accepts_and_other_frames_are_not_the_answer():
    assert hello_result(CHALLENGE, "connect-1") is None
    assert hello_result({**HELLO_OK, "id": "other"}, "connect-1") is None
    assert hello_result(HELLO_OK, "connect-1") is True


@pytest.mark.parametrize(
    ("frame", "code"), [(TOKEN_MISMATCH, "AUTH_TOKEN_MISMATCH"), (NOT_PAIRED, "NOT_PAIRED")]
)
def test_a_refused_connect_names_the_gateway_code(frame, code):
    with pytest.raises(GatewayRefused) as info:
        hello_result(frame, "connect-1")
    assert info.value.gateway_code == code
    assert info.value.code == "upstream_refused"
    assert code in str(info.value)


def test_a_close_during_connect_is_a_refusal_too():
    refused = closed_refusal(1002, "protocol mismatch")
    assert refused.gateway_code == "PROTOCOL_MISMATCH"
    assert "protocol mismatch" in str(refused)
    assert closed_refusal(None, "").gateway_code == "CLOSED"


def test_abort_frame():
    assert abort_frame("abort-1", "agent:main:x", "k1") == {
        "type": "req", "id": "abort-1", "method": "chat.abort",
        "params": {"runId": "k1", "sessionKey": "agent:main:x"},
    }  # fmt: skip


# --- the multiplexer -------------------------------------------------------------------


def source_on(
    conn: GatewayConnection, request_id: str = "r"
) -> tuple[GatewayRunSource, GatewayRun]:
    src = GatewayRunSource(
        conn, body={"message": "hi"}, session_key="MySess", request_id=request_id,
        idempotency_key="k1",
    )  # fmt: skip
    run = GatewayRun(src.request_id, "MySess")
    conn._by_request[src.request_id] = run
    conn._awaiting.add(src.request_id)
    src._run = run
    return src, run


def drain(src: GatewayRunSource, run: GatewayRun) -> list[tuple[str | None, object]]:
    out = []
    while not run.queue.empty():
        item = run.queue.get_nowait()
        if isinstance(item, Exception):
            raise item
        out += [(e.event, json.loads(e.data or "null")) for e in src.tracker.feed_frame(item)]
    return out


def conn() -> GatewayConnection:
    return GatewayConnection("ws://127.0.0.1:1", WebSocketProfile(profile="openclaw"))


async def test_frames_go_to_the_run_the_acceptance_named_under_its_canonical_key():
    c = conn()
    src, run = source_on(c)
    assert src.request_id == "agent-r-1"
    # Another run's frames, and one of ours that overtakes our acceptance.
    c._route(json.dumps(chat("k2", "delta", "other")))
    c._route(json.dumps(chat("k1", "delta", "Ans")))
    c._route(json.dumps(CHALLENGE))
    c._route(json.dumps({"type": "event", "event": "tick", "payload": {"ts": 1}}))
    c._route(json.dumps(ACCEPTED))
    c._route(json.dumps(chat("k1", "delta", "Answer", deltaText="wer")))
    c._route(json.dumps(chat("k2", "final", "other")))
    c._route(json.dumps(chat("k1", "final", "Answer!", stopReason="stop")))
    assert run.run_id == "k1"
    assert run.session_key == "agent:main:mysess"
    assert drain(src, run) == [
        ("delta", {"text": "Ans"}), ("delta", {"text": "wer"}), ("delta", {"text": "!"}),
        ("done", {"text": "Answer!"}),
    ]  # fmt: skip


async def test_replace_retry_resets_and_the_final_res_is_a_fallback_terminal():
    c = conn()
    src, run = source_on(c)
    c._route(json.dumps(ACCEPTED))
    c._route(json.dumps(chat("k1", "delta", "Draft")))
    c._route(json.dumps(chat("k1", "delta", "", deltaText="", replace=True)))
    c._route(json.dumps(chat("k1", "delta", "Good")))
    final = {
        "type": "res",
        "id": "agent-r-1",
        "ok": True,
        "payload": {"runId": "k1", "status": "ok", "result": {"payloads": [{"text": "Good."}]}},
    }
    c._route(json.dumps(final))
    assert drain(src, run) == [
        ("delta", {"text": "Draft"}), ("reset", {"text": ""}), ("delta", {"text": "Good"}),
        ("delta", {"text": "."}), ("done", {"text": "Good."}),
    ]  # fmt: skip


async def test_run_status_is_forwarded_only_when_asked():
    frame = {
        "type": "event",
        "event": "agent",
        "payload": {
            "runId": "k1",
            "sessionKey": "agent:main:mysess",
            "stream": "run_status",
            "data": {"phase": "retrying", "attempt": 2},
        },
    }
    for forward, expected in (
        (False, []),
        (True, [("status", {"phase": "retrying", "attempt": 2})]),
    ):
        c = GatewayConnection(
            "ws://x", WebSocketProfile(profile="openclaw", forward_status=forward)
        )
        src, run = source_on(c)
        c._route(json.dumps(ACCEPTED))
        c._route(json.dumps(frame))
        assert drain(src, run) == expected


async def test_aborted_with_an_object_message_ends_with_upstream_aborted():
    c = conn()
    src, run = source_on(c)
    c._route(json.dumps(ACCEPTED))
    c._route(json.dumps(chat("k1", "aborted", "part", stopReason="rpc")))
    with pytest.raises(UpstreamAborted, match="aborted"):
        drain(src, run)


async def test_a_lost_connection_fails_every_run_on_it():
    c = conn()
    (_a, run_a), (_b, run_b) = source_on(c, "a"), source_on(c, "b")
    c._lost(None, UpstreamDisconnected("gone"))  # type: ignore[arg-type]  # their socket
    for run in (run_a, run_b):
        assert isinstance(run.queue.get_nowait(), UpstreamDisconnected)
    assert c._by_request == {}


async def test_leaving_before_the_acceptance_aborts_once_it_arrives():
    c = conn()
    src, run = source_on(c)
    sent: list[object] = []
    c.send_later = lambda frame, ws=None: sent.append(frame)  # type: ignore[method-assign]
    src.abort()
    assert run.abort_on_accept
    assert sent == []
    c._route(json.dumps(ACCEPTED))
    assert sent == [abort_frame("abort-2", "agent:main:mysess", "k1")]
    assert c._by_run == {}
    assert c._by_request == {}


async def test_after_shutdown_only_the_runs_own_socket_counts():
    c = conn()
    src, run = source_on(c)
    old, new = object(), object()
    run.socket = old
    c._route(json.dumps(ACCEPTED), old)
    c._route(json.dumps({"type": "event", "event": "shutdown", "payload": {}}), old)
    assert c.draining
    # A second socket gets the same broadcast, out of step with the first.
    c._route(json.dumps(chat("k1", "delta", "Answer")), new)
    c._route(json.dumps(chat("k1", "delta", "Ans")), old)
    c._lost(new, UpstreamDisconnected("gone"))  # type: ignore[arg-type]
    assert drain(src, run) == [("delta", {"text": "Ans"})]
    c._lost(old, UpstreamDisconnected("gone"))  # type: ignore[arg-type]
    with pytest.raises(UpstreamDisconnected):
        drain(src, run)


def test_skipped_frames_are_counted_for_the_route():
    seen: list[str] = []
    c = GatewayConnection("ws://x", WebSocketProfile(profile="openclaw"), seen.append)
    c._route(b"\x00")
    c._route("not json")
    c._route("[1]")
    c._route(json.dumps({"type": "event", "event": "tick", "payload": {}}))
    assert seen == ["binary", "not_json", "not_object"]
