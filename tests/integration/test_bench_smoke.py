"""The benchmark still runs: a tiny load through every path, and numbers come out.

Nothing here is timed or compared (targets are ratios in BENCHMARKS.md,
not assertions); the test only keeps bench/ from rotting. nginx is included
when it is installed.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import socket

import pytest

from bench import conn, procs, report, run
from bench.scenarios import SMOKE


def _paths() -> list[str]:
    if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
        return ["direct", "nginx", "sidecar"]
    return ["direct", "sidecar"]


def _run(name: str, tmp_path, paths: list[str] | None = None) -> list[dict]:
    scn = SMOKE[name]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return [
        run.run_case(scn, path, tmp_path, nofile, scn.streams, None) for path in (paths or _paths())
    ]


def _doc(name: str, results: list[dict]) -> dict:
    return {
        "when": "smoke",
        "quick": True,
        "machine": run.machine(),
        "nofile": 0,
        "scenarios": {name: SMOKE[name].title},
        "notes": [],
        "results": results,
    }


def test_flow_smoke_delivers_every_event_on_every_path(tmp_path):
    scn = SMOKE["steady"]
    results = _run("steady", tmp_path)
    assert [r["target"] for r in results] == _paths()
    for r in results:
        assert r["errors"] == {}, r["target"]
        assert r["all_delivered"], r["target"]
        assert r["events"] == scn.expected > 0
        assert r["events_per_s"] > 0
        assert 0 <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["ttfb_ms"]["p50"] > 0
        assert r["client_cpu_s"] > 0
        if r["target"] != "direct":
            assert r["proxy_alive"]
            assert r["proxy"]["rss_peak_kib"] > 0
            assert r["proxy"]["cpu_s"] >= 0
            assert not math.isnan(r["proxy"]["cpu_us_per_event"])
    table = report.markdown(_doc("steady", results))
    assert "| steady | sidecar |" in table
    assert "steady: CPU per event" in table


def test_hold_smoke_keeps_streams_open_and_the_sidecar_sends_heartbeats(tmp_path):
    scn = SMOKE["idle"]
    results = _run("idle", tmp_path)
    by_path = {r["target"]: r for r in results}
    for r in results:
        assert r["errors"] == {}, r["target"]
        assert r["opened"] == scn.streams
        assert r["held_s"] > 0
    sidecar = by_path["sidecar"]
    assert sidecar["keepalives"] > 0  # heartbeats every 0.3 s while held
    assert sidecar["proxy"]["rss_peak_kib"] > 0
    assert sidecar["proxy"]["cpu_ms_per_s"] >= 0
    assert by_path["direct"]["keepalives"] == 0  # the producer itself sends nothing
    table = report.markdown(_doc("idle", results))
    assert "| idle | sidecar |" in table


@pytest.mark.parametrize("value", [[], [5], [1, 2, 3, 4]])
def test_percentile_is_nearest_rank_in_ms(value):
    got = run.percentile([v * 1000 for v in value], 50)
    if not value:
        assert math.isnan(got)
    else:
        assert got == sorted(value)[max(math.ceil(len(value) / 2) - 1, 0)]


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["session", "resume", "resume-redis", "workers2-redis"])
def test_every_deployed_mode_delivers_the_smoke_flow(tmp_path, mode):
    scn = SMOKE["steady"]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    r = run.run_case(scn, mode, tmp_path, nofile, scn.streams, None)
    assert r["errors"] == {}
    assert r["all_delivered"]
    assert r["events"] == scn.expected
    assert r["proxy_alive"]
    assert not math.isnan(r["proxy"]["cpu_us_per_event"])
    if mode.endswith("redis"):
        # The run appended to the path's own Redis, and its connections are counted.
        assert r["backend"]["cpu_s"] > 0
        assert r["backend"]["clients"] >= 1
    else:
        assert "backend" not in r
    if mode == "workers2-redis":
        # One count per worker, when a sample caught streams open (the smoke's
        # five last a fraction of a second: too few and too short to judge the spread).
        split = r["proxy"].get("streams_per_worker", [0, 0])
        assert 1 <= len(split) <= 2  # a worker not yet listening when sampled is not counted
        assert sum(split) <= scn.streams
    else:
        assert "streams_per_worker" not in r["proxy"]
    table = report.markdown(_doc("steady", [r]))
    assert f"| steady | {mode} |" in table


def test_connections_are_counted_per_process_that_holds_them():
    """The /proc reading behind the workers' split: accepted sockets on the port, by holder."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            me = os.getpid()
            assert procs.listening([me, 1], port) == [me]
            # The client ends' local ports are not the server's: only the accepted three.
            assert procs.connections_by_process([me], port) == [3]
        finally:
            for sock in clients + accepted:
                sock.close()


@pytest.mark.redis
def test_a_remote_follower_gets_every_event_from_the_second_process(tmp_path):
    """Each stream starts on one sidecar and is reopened on the other with Last-Event-ID."""
    scn = SMOKE["steady"]
    (r,) = _run("steady", tmp_path, ["remote-redis"])
    assert r["errors"] == {}
    assert r["all_delivered"]
    assert r["events"] == scn.expected
    assert r["opened"] == r["followed"] == scn.streams  # every stream moved, once
    assert r["proxy_alive"]
    parts = r["proxy"]["parts"]
    assert set(parts) == {"run", "follower"}
    # The follower process served the streams: it spent CPU, and the total is both.
    assert parts["follower"]["cpu_s"] > 0
    assert r["proxy"]["cpu_s"] == pytest.approx(sum(p["cpu_s"] for p in parts.values()))
    assert r["backend"]["clients"] >= 2  # both processes on the path's Redis
    table = report.markdown(_doc("steady", [r]))
    assert "| steady | remote-redis | follower |" in table
    assert "remote-redis: two sidecars on one Redis" in table


def test_the_websocket_route_delivers_every_delta_of_the_example_gateway(tmp_path):
    scn = SMOKE["steady-ws"]
    paths = [*(p for p in _paths() if p != "direct"), "websocket"]  # nginx when installed
    results = _run("steady-ws", tmp_path, paths)
    assert [r["target"] for r in results] == paths
    for r in results:
        assert r["errors"] == {}, r["target"]
        assert r["all_delivered"], r["target"]
        # The HTTP paths carry as many events per stream as a gateway run has deltas.
        assert r["events"] == scn.expected > 0, r["target"]
        assert r["proxy_alive"]
        assert not math.isnan(r["proxy"]["cpu_us_per_event"])
    ws = results[-1]
    assert ws["producer_cpu_s"] > 0  # the example gateway's, not the idle producer's
    assert math.isnan(ws["latency_ms"]["p50"])  # deltas carry no stamp
    table = report.markdown(_doc("steady-ws", results))
    assert "| steady-ws | websocket |" in table
    assert "nginx cannot bridge a WebSocket to SSE" in table


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b"id: r-1\ndata: T1 1 x\n\n", b"r-1"),
        (b"id: r-1\ndata: T1 1 x\n\nid: r-2\ndata: T2 2 x\n\n", b"r-2"),
        (b"event: keepalive\ndata: {}\n\nid: 7\ndata: T3 3 x\n\n", b"7"),
        (b"data: T1 1 x\n\n", None),
        (b"data: grid: 1\n\n", None),  # "id: " inside a value is not a field
    ],
)
def test_the_load_client_resumes_from_the_last_id_field_of_a_read(block, expected):
    assert conn.last_id(block) == expected


def test_the_load_client_reopens_with_the_same_key_and_last_event_id():
    at = conn.Endpoint("http://127.0.0.1:9/bench?n=5", "s", "")
    first, again = at.request("k-1"), at.request("k-1", b"r-3")
    assert first.startswith(b"GET /bench?n=5&s=k-1 HTTP/1.1\r\n")
    assert b"Last-Event-ID" not in first
    assert again.startswith(b"GET /bench?n=5&s=k-1 HTTP/1.1\r\n")
    assert b"\r\nLast-Event-ID: r-3\r\n" in again
    assert again.endswith(b"\r\n\r\n")
    posted = conn.Endpoint("http://127.0.0.1:9/agent", "", '{"message":"hi"}').request("k")
    head, _, body = posted.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /agent HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 16" in head
    assert body == b'{"message":"hi"}'
