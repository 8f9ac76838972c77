"""The benchmark scenarios, in full, quick and smoke sizes.

A *flow* scenario sends a bounded number of events per stream and ends when
every stream has its terminal event; a *hold* scenario opens silent streams,
keeps them open for ``hold`` seconds (heartbeats on in the sidecar) and
measures memory per stream and CPU per second.

``steady-ws`` is steady's shape through a WebSocket route: each stream is one
run of the example gateway, as many events as the gateway's answer has deltas
(a few dozen; steady has 500), so stream set-up weighs more per event; the HTTP
paths get the same number of events per stream at the same rate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import urlencode

from bench.targets import MODES, ws_deltas


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    kind: Literal["flow", "hold"]
    streams: int
    #: Events per stream (flow).
    events: int = 0
    #: Events per second per stream; 0: as fast as the path takes them.
    rate: float = 0.0
    size: int = 64
    comment_every: int = 0
    #: The sidecar's heartbeat interval (s). nginx has none.
    heartbeat: float = 15.0
    #: Seconds the streams are held open after they are all open (hold).
    hold: float = 0.0
    #: Seconds after the last stream opened before the hold measurement starts.
    settle: float = 1.0
    #: Load-client processes the streams are split across.
    clients: int = 1
    #: Hard bound on one load client's run (s).
    deadline: float = 120.0
    #: The paths (bench/targets.py) it runs through unless --targets narrows them.
    paths: tuple[str, ...] = ("direct", "nginx", "sidecar")

    def query(self) -> str:
        if self.kind == "hold":
            return urlencode({"idle": 1})
        params: dict[str, object] = {"n": self.events, "rate": self.rate, "size": self.size}
        if self.comment_every:
            params["comment_every"] = self.comment_every
        return urlencode(params)

    @property
    def expected(self) -> int:
        return self.streams * self.events


FULL: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "steady",
            "200 streams × 50 events/s, 64-byte payloads, 10 s",
            "flow",
            streams=200,
            events=500,
            rate=50,
            deadline=60,
            paths=("direct", "nginx", *MODES),
        ),
        Scenario(
            "steady-ws",
            f"200 streams × {ws_deltas()} events at 50/s, WebSocket route (example gateway)",
            "flow",
            streams=200,
            events=ws_deltas(),
            rate=50,
            deadline=60,
            paths=("nginx", "sidecar", "websocket"),
        ),
        Scenario(
            "comments",
            "steady + a comment every 5 events",
            "flow",
            streams=200,
            events=500,
            rate=50,
            comment_every=5,
            deadline=60,
        ),
        Scenario(
            "burst",
            "10 streams × 50,000 events, as fast as possible",
            "flow",
            streams=10,
            events=50_000,
            rate=0,
            deadline=120,
        ),
        Scenario(
            "idle",
            "5,000 open silent streams, heartbeat 1 s, held 10 s",
            "hold",
            streams=5_000,
            heartbeat=1.0,
            hold=10.0,
            clients=2,
        ),
        Scenario(
            "open10k",
            "10,000 concurrent open streams, heartbeat 1 s, held 10 s",
            "hold",
            streams=10_000,
            heartbeat=1.0,
            hold=10.0,
            clients=2,
            deadline=180,
        ),
        Scenario(
            "many-redis",
            "2,000 resumable Redis streams × 5 events/s, 6 s",
            "flow",
            streams=2_000,
            events=30,
            rate=5,
            clients=2,
            deadline=90,
            paths=("nginx", "resume-redis"),
        ),
        Scenario(
            "idle-redis",
            "10,000 open silent resumable Redis streams, heartbeat 1 s, held 10 s",
            "hold",
            streams=10_000,
            heartbeat=1.0,
            hold=10.0,
            clients=2,
            deadline=180,
            paths=("nginx", "resume-redis"),
        ),
    )
}

#: ``--quick``: the same shapes, about a fifth of the time.
QUICK: dict[str, Scenario] = {
    "steady": replace(FULL["steady"], title="200 streams × 50 events/s, 3 s", events=150),
    "steady-ws": replace(FULL["steady-ws"], streams=100,
                         title=f"100 streams × {ws_deltas()} events at 50/s, WebSocket route"),
    "comments": replace(
        FULL["comments"], title="steady + a comment every 5 events, 3 s", events=150
    ),
    "burst": replace(FULL["burst"], title="10 streams × 10,000 events, unpaced", events=10_000),
    "idle": replace(FULL["idle"], title="1,000 silent streams, heartbeat 1 s, held 3 s",
                    streams=1_000, hold=3.0),
    "open10k": replace(FULL["open10k"], title="3,000 open streams, heartbeat 1 s, held 3 s",
                       streams=3_000, hold=3.0),
    "many-redis": replace(FULL["many-redis"], title="500 resumable Redis streams × 5 events/s, 3 s",
                          streams=500, events=15),
    "idle-redis": replace(FULL["idle-redis"], title="2,000 silent resumable Redis streams, "
                          "heartbeat 1 s, held 3 s", streams=2_000, hold=3.0),
}  # fmt: skip

#: The test suite's smoke run: seconds, just enough to prove every path works.
SMOKE: dict[str, Scenario] = {
    "steady": Scenario(
        "steady", "5 streams × 20 events at 100/s", "flow", streams=5, events=20, rate=100,
        deadline=20,
    ),
    "steady-ws": Scenario(
        "steady-ws", f"5 streams × {ws_deltas()} events at 100/s", "flow", streams=5,
        events=ws_deltas(), rate=100, deadline=20, paths=("nginx", "sidecar", "websocket"),
    ),
    "idle": Scenario(
        "idle", "5 silent streams, heartbeat 0.3 s, held 1 s", "hold", streams=5,
        heartbeat=0.3, hold=1.0, settle=0.2, deadline=20,
    ),
}  # fmt: skip


def epilog() -> str:
    """``bench.run --help``'s list of the scenarios and paths."""
    lines = ["scenarios (full size; --quick: smaller) and the paths each runs:"]
    for s in FULL.values():
        lines.append(f"  {s.name}: {s.title}\n      paths: {', '.join(s.paths)}")
    lines += [
        "paths:",
        "  direct: the producer itself; nginx: proxy_buffering off; sidecar: a plain route",
        "  session, resume: session key, resume on (memory); resume-redis: resume on Redis",
        "  workers2-redis: resume on Redis, workers: 2",
        "  remote-redis: two sidecars on one Redis; each stream starts on the first and is",
        "      reopened on the second with Last-Event-ID after its first events (the first",
        "      connection is closed): the client follows the run from the other process",
        "  websocket: the sidecar in front of the example gateway (profile: openclaw);",
        "      nginx cannot bridge WebSocket to SSE, so nginx runs the same shape over HTTP",
    ]
    return "\n".join(lines)
