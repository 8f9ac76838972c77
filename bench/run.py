"""The benchmark runner: each scenario through direct, nginx and the sidecar, in one run.

``python -m bench.run [--scenarios steady,burst] [--targets nginx,resume-redis] [--quick]
[--profile] [--rounds N]``

For every (scenario, path) it starts a fresh producer and a fresh proxy on free
loopback ports, runs the load client(s) in their own processes, reads the
proxy's CPU time and RSS from /proc (children included), prints a markdown
table with the ratios against the targets and writes the whole result
as JSON to bench/results/. The steady scenario's paths run ``--rounds``
times in turn; its targets are the median of the rounds' ratios. Timing is
never asserted: only numbers come out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import procs, report, targets
from bench.procs import Child, Usage
from bench.scenarios import FULL, QUICK, Scenario, epilog

RESULTS = Path(__file__).with_name("results")
FDS_PER_PROXIED_STREAM = 2  # the client's socket and the upstream's
FD_RESERVE = 128  # listening sockets, epoll, logs, pipes
#: The scenarios whose paths run several times, in turn: their CPU and p99
#: targets are ratios to nginx, and one round's ratio moves with whatever
#: else the two cores did in that minute (the report takes the median).
REPEATED = frozenset({"steady"})
ROUNDS = 3


def percentile(values: list[int], p: float) -> float:
    """Nearest-rank percentile of ``values`` (µs), in milliseconds; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)) - 1, 0)
    return ordered[rank] / 1000


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result out of the results of several load-client processes."""
    out: dict[str, Any] = {"errors": {}}
    for key in ("streams", "opened", "completed", "short", "events", "keepalives", "comments"):
        out[key] = sum(p[key] for p in parts)
    out["followed"] = sum(p.get("followed", 0) for p in parts)
    out["bytes"] = sum(p["bytes"] for p in parts)
    for p in parts:
        for name, n in p["errors"].items():
            out["errors"][name] = out["errors"].get(name, 0) + n
    lat = [v for p in parts for v in p["latency_us"]]
    ttfb = [v for p in parts for v in p["ttfb_us"]]
    out["latency_ms"] = {"p50": percentile(lat, 50), "p99": percentile(lat, 99)}
    out["latency_ms"]["max"] = percentile(lat, 100)
    out["ttfb_ms"] = {"p50": percentile(ttfb, 50), "p99": percentile(ttfb, 99)}
    start = min(p["start_us"] for p in parts)
    last = max(p["last_event_us"] for p in parts)
    out["events_per_s"] = out["events"] / ((last - start) / 1e6) if last > start else 0.0
    out["held_s"] = max(p["held_us"] for p in parts) / 1e6
    out["client_cpu_s"] = sum(p["cpu_s"] for p in parts)
    out["wall_s"] = (max(p["end_us"] for p in parts) - start) / 1e6
    return out


class PeakRss(threading.Thread):
    """Samples a path's RSS (its proxy processes) four times a second; ``peak`` is the highest.

    With workers, also how many client connections each worker holds; ``split``
    is the sample with the most connections in all (the streams' spread).
    """

    def __init__(self, target: targets.Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.peak = target.usage().rss_kib
        self.split: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        workers = self.target.worker_pids()
        while not self.done.wait(0.25):
            self.peak = max(self.peak, self.target.usage().rss_kib)
            if workers:
                counts = procs.connections_by_process(workers, self.target.port)
                if sum(counts) > sum(self.split):
                    self.split = counts

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def _clients(scn: Scenario, target: targets.Target, streams: int, workdir: Path) -> list[Child]:
    url, tag = target.url(scn.query()), target.name
    follow = target.follow_url(scn.query())
    n = max(min(scn.clients, streams), 1)
    split = [streams // n + (1 if i < streams % n else 0) for i in range(n)]
    deadline = scn.deadline + scn.settle + scn.hold
    out = []
    for i, count in enumerate(split):
        argv = procs.python(
            "bench.load",
            f"--url={url}",
            f"--streams={count}",
            f"--events={scn.events}",
            f"--deadline={deadline}",
        )
        if target.session_param:
            argv.append(f"--session-param={target.session_param}")
        if follow:
            argv.append(f"--follow-url={follow}")
        if target.body:
            argv.append(f"--body={target.body}")
        if target.count_event:
            argv.append(f"--count-event={target.count_event}")
        if scn.kind == "hold":
            argv.append("--hold")
        out.append(Child(f"load-{tag}-{i}", argv, workdir, stdin=scn.kind == "hold"))
    return out


def _result(child: Child, timeout: float, phase: str = "done") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(child.readline(timeout))
    if data.get("phase") != phase:
        raise RuntimeError(f"{child.name}: expected phase {phase}, got {data.get('phase')}")
    return data


def _flow(scn: Scenario, target: targets.Target, streams: int, workdir: Path) -> dict[str, Any]:
    base, base_parts = target.usage_parts()
    backend0 = target.backend()
    clients = _clients(scn, target, streams, workdir)
    try:
        with PeakRss(target) as peak:
            parts = [_result(c, scn.deadline + 30) for c in clients]
        end, end_parts = target.usage_parts()
    finally:
        for c in clients:
            c.stop()
    out = merge(parts)
    cpu = end.cpu_s - base.cpu_s
    out["proxy"] = {
        "cpu_s": cpu,
        "cpu_us_per_event": _per_event(cpu, out["events"]),
        "rss_base_kib": base.rss_kib,
        "rss_peak_kib": peak.peak,
    }
    if peak.split:
        out["proxy"]["streams_per_worker"] = peak.split
    if len(end_parts) > 1:
        # Each process of a path apart (a remote follower's run and its follower).
        out["proxy"]["parts"] = {
            role: {"cpu_s": (used := end_parts[role] - base_parts.get(role, 0.0)),
                   "cpu_us_per_event": _per_event(used, out["events"])}
            for role in end_parts
        }  # fmt: skip
    _backend(out, backend0, target.backend())
    return out


def _per_event(cpu_s: float, events: int) -> float:
    return cpu_s / events * 1e6 if events else math.nan


def _backend(
    out: dict[str, Any], before: dict[str, Any] | None, after: dict[str, Any] | None
) -> None:
    """The Redis of a path: its CPU over the measurement and its client connections."""
    if before is None or after is None:
        return
    cpu = after["cpu_s"] - before["cpu_s"]
    out["backend"] = {"cpu_s": cpu, "clients": after["clients"]}
    if out.get("events"):
        out["backend"]["cpu_us_per_event"] = cpu / out["events"] * 1e6


def _hold(scn: Scenario, target: targets.Target, streams: int, workdir: Path) -> dict[str, Any]:
    base = target.usage()
    clients = _clients(scn, target, streams, workdir)
    try:
        opened = [_result(c, scn.deadline, "opened") for c in clients]
        time.sleep(scn.settle)
        u0, backend0 = target.usage(), target.backend()
        time.sleep(scn.hold)
        u1, backend1 = target.usage(), target.backend()
        for c in clients:
            c.send("close")
        parts = [_result(c, 60) for c in clients]
    finally:
        for c in clients:
            c.stop()
    out = merge(parts)
    n = sum(o["opened"] for o in opened)
    cpu = u1.cpu_s - u0.cpu_s
    out["proxy"] = {
        "cpu_s": cpu,
        "cpu_ms_per_s": cpu / (u1.at - u0.at) * 1000,
        "rss_base_kib": base.rss_kib,
        "rss_peak_kib": u1.rss_kib,
        "rss_per_stream_kib": (u1.rss_kib - base.rss_kib) / n if n else math.nan,
    }
    out["keepalives_per_s"] = out["keepalives"] / out["held_s"] if out["held_s"] else 0.0
    _backend(out, backend0, backend1)
    return out


def run_case(
    scn: Scenario, name: str, workdir: Path, nofile: int, streams: int, profile: Path | None
) -> dict[str, Any]:
    """One scenario through one path, with a fresh producer and proxy."""
    casedir = workdir / f"{scn.name}-{name}"
    casedir.mkdir(parents=True)
    producer, upstream_port = targets.start_producer(casedir)
    target: targets.Target | None = None
    spy: Child | None = None
    try:
        target = targets.start(
            name, upstream_port, casedir, heartbeat=scn.heartbeat, streams=streams,
            nofile=nofile, rate=scn.rate,
        )  # fmt: skip
        if profile is not None and target.pid is not None:
            spy = _py_spy(target.pid, profile / f"profile-{scn.name}.txt", casedir)
        # The example gateway is the upstream of a WebSocket route (the producer idles).
        upstream_pid = target.producer_pid or producer.pid
        p0, t0 = Usage.of(upstream_pid), target.usage()
        busy0, own0 = procs.machine_busy_s(), procs.self_cpu_s()
        measure = _flow if scn.kind == "flow" else _hold
        out = measure(scn, target, streams, casedir)
        busy, own = procs.machine_busy_s() - busy0, procs.self_cpu_s() - own0
        p1, t1 = Usage.of(upstream_pid), target.usage()
        out["producer_cpu_s"] = p1.cpu_s - p0.cpu_s
        out["proxy_alive"] = target.alive()
        # CPU the machine spent on anything but this case's processes: other
        # people's work on the shared cores, which shows in latency and events/s.
        ours = out["client_cpu_s"] + out["producer_cpu_s"] + (t1.cpu_s - t0.cpu_s) + own
        out["other_cpu_cores"] = max(busy - ours, 0.0) / max(t1.at - t0.at, 1e-9)
    finally:
        if spy is not None:
            spy.stop(2)  # SIGINT: py-spy writes its file and exits
        if target is not None:
            target.stop()
        producer.stop()
    out.update(scenario=scn.name, target=name, expected=streams * scn.events)
    out["all_delivered"] = scn.kind == "flow" and out["completed"] == streams
    if out["errors"] or not out["proxy_alive"]:
        out["logs"] = str(_keep_logs(casedir))
    return out


def _keep_logs(casedir: Path) -> Path:
    """Copy a failed case's logs and configs out of the temporary directory."""
    dest = RESULTS / "logs" / casedir.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for path in casedir.rglob("*"):
        if path.is_file() and path.suffix in {".stderr", ".log", ".yaml", ".conf"}:
            shutil.copy(path, dest / f"{path.parent.name}-{path.name}")
    return dest


def _py_spy(pid: int, path: Path, workdir: Path) -> Child:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    # --native: C frames too, so the summary can tell system calls from Python.
    argv = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--native"]
    child = Child("py-spy", [*argv, "--output", str(path)], workdir)
    time.sleep(0.5)  # let it attach before the load starts
    return child


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": targets.nginx_version(),
    }


def revision() -> str:
    """The commit measured, with "+dirty" when the sidecar's files have local changes."""
    git = ["git", "-C", str(procs.ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "sidecar"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.run",
        description=__doc__.splitlines()[0],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenarios", default=",".join(FULL), help="comma-separated names")
    parser.add_argument("--targets", default=None, help="comma-separated (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller loads, about a minute")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy one sidecar path (--targets, default sidecar)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"run steady's paths this many times, in turn (default {ROUNDS}; --quick: 1)",
    )
    parser.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = parser.parse_args(argv)
    rounds = args.rounds
    if rounds is None:
        rounds = 1 if args.quick or args.profile else ROUNDS
    if rounds < 1:
        parser.error("--rounds takes a positive number")
    table = QUICK if args.quick else FULL
    wanted = [s for s in args.scenarios.split(",") if s]
    if args.targets is None:
        names = ["sidecar"] if args.profile else list(targets.NAMES)
    else:
        names = [t for t in args.targets.split(",") if t]
    if args.profile and len(names) != 1:
        parser.error("--profile takes one path in --targets")
    unknown = [s for s in wanted if s not in table] + [t for t in names if t not in targets.NAMES]
    if unknown:
        parser.error(
            f"unknown {', '.join(unknown)}; scenarios: {', '.join(table)}; "
            f"targets: {', '.join(targets.NAMES)}"
        )
    chosen = [table[s] for s in wanted]
    if "nginx" in names and targets.ensure_nginx() is None:
        print("nginx is not installed and could not be installed: skipping it", file=sys.stderr)
        names.remove("nginx")
    nofile = procs.raise_nofile()
    cap = (nofile - FD_RESERVE) // FDS_PER_PROXIED_STREAM
    notes: list[str] = []
    results: list[dict[str, Any]] = []
    RESULTS.mkdir(exist_ok=True)
    profile_dir = RESULTS if args.profile else None
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sse-bench-") as tmp:
        for scn in chosen:
            streams = scn.streams
            if streams > cap:
                streams = cap
                notes.append(
                    f"{scn.name}: ran {cap:,} streams, not {scn.streams:,}: RLIMIT_NOFILE is "
                    f"{nofile:,} here and a proxy needs {FDS_PER_PROXIED_STREAM} fds per stream"
                )
            repeat = rounds if scn.name in REPEATED else 1
            for round_ in range(1, repeat + 1):
                for name in [n for n in names if n in scn.paths]:
                    label = f" (round {round_} of {repeat})" if repeat > 1 else ""
                    print(f"# {scn.name} via {name}{label}: {streams:,} streams ...", flush=True)
                    workdir = Path(tmp) / f"round-{round_}" if repeat > 1 else Path(tmp)
                    result = run_case(scn, name, workdir, nofile, streams, profile_dir)
                    if repeat > 1:
                        result["round"] = round_
                    results.append(result)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rounds": rounds,
        "quick": args.quick,
        "machine": machine(),
        "revision": revision(),
        "nofile": nofile,
        # Other work on the two cores shows in latency and throughput (not in CPU time).
        "loadavg": {"before": load_before, "after": os.getloadavg()},
        "scenarios": {s.name: s.title for s in chosen},
        "notes": notes,
        "results": results,
    }
    out = args.output or RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps(doc, indent=1, default=str))
    print()
    print(report.markdown(doc))
    print(f"\nresults: {out}")
    if args.profile:
        from bench import profile

        for scn in chosen:
            path = RESULTS / f"profile-{scn.name}.txt"
            if path.exists():
                print(f"\n## profile: {scn.name}\n\n{profile.summary(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
