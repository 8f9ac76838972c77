"""Markdown tables of one benchmark run and its ratios against the targets.

The targets are the plain route's (against nginx) and those of every mode users
deploy: session key, resume on memory and on Redis, two workers, and Redis at
scale (many streams, many idle streams). A remote follower and a WebSocket
route have no target of their own: their price against nginx is shown.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

Result = dict[str, Any]


def _find(doc: dict[str, Any], scenario: str, target: str) -> Result | None:
    for r in doc["results"]:
        if r["scenario"] == scenario and r["target"] == target:
            found: Result = r
            return found
    return None


def _rounds(doc: dict[str, Any], scenario: str, target: str) -> dict[int, Result]:
    """A path's results in a scenario, by round (a scenario run once has round 1 only)."""
    return {
        r.get("round", 1): r
        for r in doc["results"]
        if r["scenario"] == scenario and r["target"] == target
    }


def _scenario(r: Result) -> str:
    """A row's scenario, with its round when the scenario ran more than once."""
    return str(r["scenario"]) + (f" #{r['round']}" if "round" in r else "")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def paired(
    doc: dict[str, Any], scenario: str, base: str, path: str, *value: str, diff: bool = False
) -> tuple[float | None, float | None, float | None]:
    """Medians of ``base``'s and ``path``'s values, and of their ratio (or difference) per round.

    Each round runs every path of the scenario in turn, within the same
    minute, so a ratio of the same round compares like with like; the median
    of those ratios is what a target is judged on, since one round's moves
    with whatever else the cores did meanwhile (nginx's own by ±10-15 %).
    """
    a_rounds, b_rounds = _rounds(doc, scenario, base), _rounds(doc, scenario, path)
    a = [v for r in a_rounds.values() if (v := _value(r, *value)) is not None]
    b = [v for r in b_rounds.values() if (v := _value(r, *value)) is not None]
    both: list[float] = []
    for k in a_rounds.keys() & b_rounds.keys():
        va, vb = _value(a_rounds[k], *value), _value(b_rounds[k], *value)
        if va is None or vb is None:
            continue
        if diff:
            both.append(vb - va)
        elif (ratio := _ratio(vb, va)) is not None:
            both.append(ratio)
    return _median(a), _median(b), _median(both)


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 10**digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _mib(kib: float) -> str:
    return _num(kib / 1024)


def _errors(r: Result) -> str:
    errs = r["errors"]
    if not errs:
        return "0"
    return ", ".join(f"{k}: {v}" for k, v in sorted(errs.items()))


def _other(r: Result) -> str:
    other = r.get("other_cpu_cores")
    return "–" if other is None else f"{other:.2f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def flow_table(doc: dict[str, Any]) -> list[str]:
    rows = [
        "| scenario | path | events delivered | events/s | latency p50 / p99 (ms) "
        "| TTFB p50 / p99 (ms) | proxy CPU (s) | CPU µs/event | proxy RSS peak (MiB) "
        "| load / producer CPU (s) | other work (cores) | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        if "cpu_us_per_event" not in r["proxy"]:
            continue
        p = r["proxy"]
        direct = r["target"] == "direct"
        delivered = f"{r['events']:,} / {r['expected']:,}" + ("" if r["all_delivered"] else " ✗")
        rows.append(
            f"| {_scenario(r)} | {r['target']} | {delivered} | {_num(r['events_per_s'], 4)} "
            f"| {_num(r['latency_ms']['p50'])} / {_num(r['latency_ms']['p99'])} "
            f"| {_num(r['ttfb_ms']['p50'])} / {_num(r['ttfb_ms']['p99'])} "
            f"| {'–' if direct else _num(p['cpu_s'])} "
            f"| {'–' if direct else _num(p['cpu_us_per_event'])} "
            f"| {'–' if direct else _mib(p['rss_peak_kib'])} "
            f"| {_num(r['client_cpu_s'], 2)} / {_num(r['producer_cpu_s'], 2)} "
            f"| {_other(r)} | {_errors(r)} |"
        )
    return rows if len(rows) > 2 else []


def hold_table(doc: dict[str, Any]) -> list[str]:
    rows = [
        "| scenario | path | open streams | heartbeats received/s | proxy CPU (ms/s) "
        "| proxy RSS (MiB) | RSS per stream (KiB) | other work (cores) | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        p = r["proxy"]
        if "rss_per_stream_kib" not in p:
            continue
        direct = r["target"] == "direct"
        rows.append(
            f"| {r['scenario']} | {r['target']} | {r['opened']:,} / {r['streams']:,} "
            f"| {_num(r['keepalives_per_s'], 4)} "
            f"| {'–' if direct else _num(p['cpu_ms_per_s'])} "
            f"| {'–' if direct else _mib(p['rss_peak_kib'])} "
            f"| {'–' if direct else _num(p['rss_per_stream_kib'])} | {_other(r)} | {_errors(r)} |"
        )
    return rows if len(rows) > 2 else []


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**pass**" if ok else "**miss**")


def _value(r: Result | None, *path: str) -> float | None:
    cur: Any = r
    for key in path:
        if cur is None:
            return None
        cur = cur.get(key)
    return cur if isinstance(cur, int | float) else None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured values, ratios and a verdict."""
    out: list[dict[str, Any]] = []

    def get(scenario: str, target: str, *path: str) -> float | None:
        return _value(_find(doc, scenario, target), *path)

    def add(
        name: str,
        unit: str,
        n: Any,
        s: Any,
        d: Any,
        goal: str,
        ok: bool | None,
        ratio: float | None = None,
    ) -> None:
        out.append({"target": name, "unit": unit, "nginx": n, "sidecar": s, "direct": d,
                    "sidecar/nginx": _ratio(s, n) if ratio is None else ratio,
                    "sidecar/direct": _ratio(s, d), "goal": goal, "ok": ok})  # fmt: skip

    cpu = ("proxy", "cpu_us_per_event")
    n, s, r = paired(doc, "steady", "nginx", "sidecar", *cpu)
    add("steady: CPU per event", "µs", n, s, None, "≤ 1.5× nginx",
        None if r is None else r <= 1.5, r)  # fmt: skip
    s = get("comments", "sidecar", *cpu)
    r = _ratio(s, n)
    add("comments: CPU per event (vs nginx steady)", "µs", n, s, None, "≤ 2× nginx steady",
        None if r is None else r <= 2.0)  # fmt: skip
    eps = ("events_per_s",)
    n, s, d = (get("burst", t, *eps) for t in ("nginx", "sidecar", "direct"))
    r = _ratio(s, n)
    add("burst: events/s", "ev/s", n, s, d, "≥ 0.8× nginx", None if r is None else r >= 0.8)
    p99 = ("latency_ms", "p99")
    n, s, extra = paired(doc, "steady", "nginx", "sidecar", *p99, diff=True)
    d = get("steady", "direct", *p99)
    add("steady: p99 latency", "ms", n, s, d, "sidecar − nginx ≤ 1 ms",
        None if extra is None else extra <= 1.0)  # fmt: skip
    mem = ("proxy", "rss_per_stream_kib")
    n, s = get("idle", "nginx", *mem), get("idle", "sidecar", *mem)
    r = _ratio(s, n)
    add("idle: RSS per open stream", "KiB", n, s, None, "≤ 1.25× nginx",
        None if r is None else r <= 1.25)  # fmt: skip
    held = _find(doc, "open10k", "sidecar")
    ok = None
    if held is not None:
        ok = held["opened"] == held["streams"] and not held["errors"] and held["proxy_alive"]
    n = get("open10k", "nginx", "proxy", "rss_peak_kib")
    s = get("open10k", "sidecar", "proxy", "rss_peak_kib")
    streams = f"{held['streams']:,}" if held else "10,000"
    add(f"open10k: {streams} streams held, RSS", "MiB", n and n / 1024, s and s / 1024, None,
        "held, no errors", ok)  # fmt: skip
    _deployed_targets(doc, get, add)
    return out


def _deployed_targets(doc: dict[str, Any], get: Any, add: Any) -> None:
    """The deployment modes' targets: each mode's price against nginx in the same run.

    The steady ones are judged on the median of the rounds' ratios
    (:func:`paired`) when the scenario ran more than once.
    """
    cpu, p99 = ("proxy", "cpu_us_per_event"), ("latency_ms", "p99")
    n_cpu, n_p99 = get("steady", "nginx", *cpu), get("steady", "nginx", *p99)
    for mode, goal in (("session", 1.6), ("resume", 1.75), ("resume-redis", 2.5)):
        n, s, r = paired(doc, "steady", "nginx", mode, *cpu)
        add(f"steady via {mode}: CPU per event", "µs", n, s, None, f"≤ {goal}× nginx",
            None if r is None else r <= goal, r)  # fmt: skip
    for mode in ("sidecar", "session", "resume", "resume-redis"):
        n, s, extra = paired(doc, "steady", "nginx", mode, *p99, diff=True)
        add(f"steady via {mode}: p99 latency", "ms", n, s, None, "sidecar − nginx ≤ 5 ms",
            None if extra is None else extra <= 5.0)  # fmt: skip
    s = get("steady", "remote-redis", *cpu)
    add("steady via remote-redis (run + follower process): CPU per event", "µs", n_cpu, s, None,
        "measured (no target)", None)  # fmt: skip
    s = get("steady", "remote-redis", *p99)
    add("steady via remote-redis: p99 latency (the reconnect included)", "ms", n_p99, s, None,
        "measured (no target)", None)  # fmt: skip
    n, s = get("steady-ws", "nginx", *cpu), get("steady-ws", "websocket", *cpu)
    add("steady-ws via websocket: CPU per event (nginx: HTTP)", "µs", n, s, None,
        "measured (no target)", None)  # fmt: skip
    _, two, r = paired(doc, "steady", "resume-redis", "workers2-redis", *cpu)
    add("steady via workers2-redis: CPU per event vs one worker", "µs", None, two, None,
        "≤ 1.1× resume-redis", None if r is None else r <= 1.1, r)  # fmt: skip
    two_workers = _find(doc, "steady", "workers2-redis")
    split = (two_workers or {}).get("proxy", {}).get("streams_per_worker")
    share = min(split) / sum(split) if split and sum(split) else None
    add("steady via workers2-redis: the fewest streams a worker got", "share", None, share,
        None, "≥ 0.4 (each 40–60 %)", None if share is None else share >= 0.4)  # fmt: skip
    many = _find(doc, "many-redis", "resume-redis")
    ok = None if many is None else bool(many["all_delivered"] and not many["errors"])
    add("many-redis: every event, no errors", "events", get("many-redis", "nginx", "events"),
        get("many-redis", "resume-redis", "events"), None, "all delivered", ok)  # fmt: skip
    idle = _find(doc, "idle-redis", "resume-redis")
    ok = None
    if idle is not None:
        ok = idle["opened"] == idle["streams"] and not idle["errors"] and idle["proxy_alive"]
    add("idle-redis: streams held, no errors", "streams", None,
        idle and idle["opened"], None, "held, no errors", ok)  # fmt: skip
    clients = _value(idle, "backend", "clients")
    add("idle-redis: Redis connections per process", "conns", None, clients, None, "≤ 16",
        None if clients is None else clients <= 16)  # fmt: skip
    mem = ("proxy", "rss_per_stream_kib")
    n, s = get("idle-redis", "nginx", *mem), get("idle-redis", "resume-redis", *mem)
    r = _ratio(s, n)
    add("idle-redis: RSS per open stream", "KiB", n, s, None, "≤ 1.5× nginx",
        None if r is None else r <= 1.5)  # fmt: skip


def backend_table(doc: dict[str, Any]) -> list[str]:
    rows = [
        "| scenario | path | Redis CPU (s) | Redis CPU µs/event | Redis client connections |",
        "|---|---|---:|---:|---:|",
    ]
    for r in doc["results"]:
        b = r.get("backend")
        if b is None:
            continue
        rows.append(
            f"| {_scenario(r)} | {r['target']} | {_num(b['cpu_s'])} "
            f"| {_num(b.get('cpu_us_per_event'))} | {b['clients']:,} |"
        )
    return rows if len(rows) > 2 else []


def process_table(doc: dict[str, Any]) -> list[str]:
    """The CPU of each process of a path that has several (a remote follower's two)."""
    rows = [
        "| scenario | path | process | CPU (s) | CPU µs/event |",
        "|---|---|---|---:|---:|",
    ]
    for r in doc["results"]:
        for role, part in r["proxy"].get("parts", {}).items():
            rows.append(
                f"| {_scenario(r)} | {r['target']} | {role} | {_num(part['cpu_s'])} "
                f"| {_num(part['cpu_us_per_event'])} |"
            )
    return rows if len(rows) > 2 else []


def targets_table(doc: dict[str, Any]) -> list[str]:
    rows = [
        "| target | nginx | sidecar | direct | sidecar/nginx | sidecar/direct | goal | result |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for t in targets(doc):
        if t["nginx"] is None and t["sidecar"] is None:
            continue
        unit = t["unit"]
        rows.append(
            f"| {t['target']} ({unit}) | {_num(t['nginx'])} | {_num(t['sidecar'])} "
            f"| {_num(t['direct'])} | {_ratio_text(t['sidecar/nginx'])} "
            f"| {_ratio_text(t['sidecar/direct'])} | {t['goal']} | {_verdict(t['ok'])} |"
        )
    return rows if len(rows) > 2 else []


def _ratio_text(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _load(doc: dict[str, Any]) -> str:
    load = doc.get("loadavg")
    if not load:
        return ""
    return (
        f" Load average (1 min) {load['before'][0]:.2f} before, {load['after'][0]:.2f} after"
        " (anything else on the cores shows in latency and events/s, not in CPU time)."
    )


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"Run {doc['when']}{' (--quick)' if doc['quick'] else ''} of "
        f"{doc.get('revision', 'unknown')}: {m['cores']} cores "
        f"({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"nginx {m['nginx'] or 'not installed'}, RLIMIT_NOFILE {doc['nofile']:,}." + _load(doc),
        "",
    ]
    for name, title in doc["scenarios"].items():
        lines.append(f"- **{name}**: {title}")
    for note in doc["notes"]:
        lines.append(f"- note: {note}")
    if any(r["target"] == "remote-redis" for r in doc["results"]):
        lines.append(
            "- note: remote-redis: two sidecars on one Redis; each stream starts on the first "
            "(`run`), and after its first events the client closes that connection and reopens "
            "the stream on the second (`follower`) with `Last-Event-ID`: the run goes on in the "
            "first, the client follows it from the second. Events sent meanwhile come as "
            "replay, so latency includes the reconnect; proxy CPU is both processes'"
        )
    if any(r["target"] == "websocket" for r in doc["results"]):
        lines.append(
            "- note: websocket: nginx cannot bridge a WebSocket to SSE; its steady-ws row is the "
            "same shape over plain HTTP (the bench producer). The gateway's deltas carry no "
            "timestamp, so the WebSocket route has no latency figure; load / producer CPU is "
            "the load client's and the example gateway's"
        )
    tables = (flow_table(doc), hold_table(doc), process_table(doc), backend_table(doc),
              targets_table(doc))  # fmt: skip
    for table in tables:
        if table:
            lines += ["", *table]
    return "\n".join(lines)
