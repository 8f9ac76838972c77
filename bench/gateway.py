"""Gateway bench: N concurrent runs through the example gateway in broadcast mode.

``python -m bench.gateway [--runs 100] [--speed 2]``

The example gateway (OpenClaw's protocol) sends every run's frames to every
operator connection, as the real one does. The sidecar, with ``profile:
openclaw``, holds one shared connection and routes frames by run id. This
reports the sidecar's CPU time (from /proc) per delta delivered to clients,
next to the same figure for the HTTP path (the example producer's token
events through an HTTP route), measured in the same run. Only numbers come
out; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import aiohttp
import yaml

from bench import procs
from bench.procs import Child, Usage

TOKEN = "bench-token"


def _config(port: int, admin: int, gateway_port: int, producer_port: int) -> dict[str, object]:
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin},
        "logging": {"level": "warning", "format": "json"},
        "routes": [
            {
                "name": "agent",
                "path": "/agent",
                "upstream": f"ws://127.0.0.1:{gateway_port}",
                "websocket": {"profile": "openclaw", "token": TOKEN},
            },
            {"name": "http", "path": "/http", "upstream": f"http://127.0.0.1:{producer_port}"},
        ],
    }


async def _client(http: aiohttp.ClientSession, url: str, **kwargs: object) -> int:
    """Events of the stream (deltas for the gateway, every data event for HTTP)."""
    count = 0
    async with http.post(url, **kwargs) as resp:  # type: ignore[arg-type]
        async for line in resp.content:
            if line.startswith(b"data:") and b"keepalive" not in line:
                count += 1
    return count


async def _phase(pid: int, coros: list[object]) -> tuple[int, float]:
    before = Usage.of(pid)
    counts = await asyncio.gather(*coros)  # type: ignore[call-overload]
    after = Usage.of(pid)
    return sum(counts), after.cpu_s - before.cpu_s


async def _measure(port: int, pid: int, runs: int) -> dict[str, object]:
    base = f"http://127.0.0.1:{port}"
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        # One run first: the shared connection's handshake is not part of the figure.
        await _client(http, base + "/agent", json={"message": "warm up"})
        deltas, ws_cpu = await _phase(
            pid,
            [
                _client(
                    http,
                    base + "/agent",
                    json={"message": f"question {i}"},
                    headers={"X-Session-Key": f"bench-{i}"},
                )
                for i in range(runs)
            ],
        )
        events, http_cpu = await _phase(pid, [_client(http, base + "/http") for _ in range(runs)])
    return {
        "runs": runs,
        "gateway_deltas": deltas,
        "gateway_cpu_s": round(ws_cpu, 3),
        "gateway_cpu_us_per_delta": round(ws_cpu / max(deltas, 1) * 1e6, 1),
        "http_events": events,
        "http_cpu_s": round(http_cpu, 3),
        "http_cpu_us_per_event": round(http_cpu / max(events, 1) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--speed", type=float, default=2.0)
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    gport, pport, port, admin = (procs.free_port() for _ in range(4))
    speed = str(args.speed)
    children = [
        Child(
            "gateway",
            procs.python(
                "sidecar.examples.gateway", "--port", str(gport), "--speed", speed, "--token", TOKEN
            ),
            logdir,
        ),
        Child("producer", procs.python("sidecar.examples.producer", "--port", str(pport)), logdir),
    ]
    config = logdir / "sidecar.yaml"
    config.write_text(yaml.safe_dump(_config(port, admin, gport, pport)))
    try:
        for child, p in zip(children, (gport, pport), strict=True):
            procs.wait_port(p, 15, child)
        sidecar = Child("sidecar", procs.python("sidecar", "--config", str(config)), logdir)
        children.append(sidecar)
        procs.wait_port(port, 15, sidecar)
        result = procs.run_loop(_measure(port, sidecar.pid, args.runs))
    finally:
        for child in reversed(children):
            child.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
