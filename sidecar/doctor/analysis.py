"""The doctor's judgement: a pure function from what arrived, and when, to a report."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

PROBE_PATH = "/_sse-sidecar/probe"

#: A heartbeat must come within this share of the chain's cut-off, so that a
#: late one (a busy loop, a slow network) still lands in time.
SAFETY = 0.5
#: Measurement slack: timers of proxies fire a few ms early or late.
SLACK = 0.05
#: An event this much later than the least-delayed one arrived late (at least;
#: half the send interval when that is longer).
LATE = 0.1
#: Two events arrived together when their arrival gap is under this share of their send gap.
CLUMP = 0.25

End = Literal["probe_end", "closed", "timeout"]
Verdict = Literal["ok", "problem", "note"]


class DoctorError(Exception):
    """A usage or connection problem: no report is possible (exit code 2)."""


# --- the analysis (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    n: int
    #: When the probe wrote it, by the server's clock (time.time()).
    sent: float
    #: When it arrived, in seconds since the request went out (client's clock).
    arrived: float


@dataclass(frozen=True)
class Observation:
    """What the client saw of one probe stream. Client times count from the request."""

    ticks: Sequence[Tick]
    headers: Mapping[str, str]
    #: When the stream ended, and how: the probe's own end, closed early, or our timeout.
    ended_at: float
    end: End
    #: The probe's parameters (as it echoed them, else as requested).
    events: int = 20
    interval: float = 0.25
    silence: float = 120.0
    #: The heartbeat interval to judge (--heartbeat, else the probe's; None: unknown).
    heartbeat: float | None = None
    #: The probe event's server_time: the server-clock origin of the ticks' ``sent``.
    server_start: float | None = None
    #: The body began with gzip's magic bytes.
    gzip_magic: bool = False
    #: False when the body was in an encoding doctor cannot decode (events untimed).
    decodable: bool = True


@dataclass(frozen=True)
class Finding:
    topic: str
    verdict: Verdict
    text: str


@dataclass(frozen=True)
class Report:
    buffered: bool | None
    compressed: bool
    #: Seconds of silence after which the chain closed the stream (None: it did not).
    cut_after: float | None
    heartbeat: float | None
    heartbeat_ok: bool | None
    findings: tuple[Finding, ...] = field(default=())

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "problem"]

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def render(self, url: str) -> str:
        lines = [f"sse-sidecar doctor: {url}"]
        for f in self.findings:
            lines.append(f"  {f.topic + ':':<13}{_LABEL[f.verdict]:<10}{f.text}")
        problems = self.problems
        if problems:
            topics = ", ".join(f.topic for f in problems)
            lines.append(f"result: {len(problems)} problem(s) found ({topics})")
        else:
            lines.append("result: no problem found")
        return "\n".join(lines)


_LABEL: dict[Verdict, str] = {"ok": "ok", "problem": "PROBLEM", "note": "note"}


def analyse(obs: Observation) -> Report:
    buffered, buffering = _buffering(obs)
    compressed, compression = _compression(obs)
    cut, silence = _silence(obs)
    heartbeat_ok, heartbeat = _heartbeat(obs, cut)
    return Report(
        buffered=buffered,
        compressed=compressed,
        cut_after=cut,
        heartbeat=obs.heartbeat,
        heartbeat_ok=heartbeat_ok,
        findings=(buffering, compression, silence, heartbeat, _headers(obs)),
    )


def _buffering(obs: Observation) -> tuple[bool | None, Finding]:
    ticks = sorted(obs.ticks, key=lambda t: t.n)
    if not obs.decodable:
        return None, Finding("buffering", "note", "cannot tell: doctor cannot decode the body")
    if not ticks:
        if obs.events == 0:
            return None, Finding("buffering", "note", "cannot tell: no events were requested")
        # The probe writes its first events at once: nothing at all is held somewhere.
        text = (
            f"buffered: not one event arrived in {obs.ended_at:.1f} s, though the probe "
            f"sends its first at once; {_BUFFER_FIX}"
        )
        return True, Finding("buffering", "problem", text)
    if len(ticks) == 1:
        text = f"cannot tell from one event (it arrived after {_dur(ticks[0].arrived)})"
        return None, Finding("buffering", "note", text)
    base = min(t.arrived - t.sent for t in ticks)
    lags = [t.arrived - t.sent - base for t in ticks]
    sent_gap = statistics.median(b.sent - a.sent for a, b in itertools.pairwise(ticks))
    tolerance = max(LATE, 0.5 * sent_gap)
    late = sum(lag > tolerance for lag in lags)
    if late >= 2 and late >= 0.2 * len(ticks):
        size, spread, at = _largest_clump(ticks)
        clump = f" and in clumps: {size} within {_dur(spread)} after {at:.1f} s" if size > 1 else ""
        text = (
            f"buffered: {late} of {len(ticks)} events arrived late (up to {_dur(max(lags))})"
            f"{clump}, though they were sent {_dur(sent_gap)} apart; {_BUFFER_FIX}"
        )
        return True, Finding("buffering", "problem", text)
    arrived_gap = statistics.median(b.arrived - a.arrived for a, b in itertools.pairwise(ticks))
    text = (
        f"not buffered: events arrived {_dur(arrived_gap)} apart as sent (none more than "
        f"{_dur(max(lags))} late), the first {ticks[0].arrived:.2f} s after the request"
    )
    return False, Finding("buffering", "ok", text)


_BUFFER_FIX = (
    "something on the path holds the stream until a buffer fills or the stream ends "
    "(nginx: proxy_buffering off, proxy_http_version 1.1; elsewhere: response buffering off)"
)


def _largest_clump(ticks: Sequence[Tick]) -> tuple[int, float, float]:
    """(size, arrival spread, arrival time) of the largest run of ticks that arrived together."""
    best = (1, 0.0, ticks[0].arrived)
    start = 0
    for i in range(1, len(ticks) + 1):
        if i < len(ticks):
            sent_gap = ticks[i].sent - ticks[i - 1].sent
            arrived_gap = ticks[i].arrived - ticks[i - 1].arrived
            if sent_gap >= 0.01 and arrived_gap < CLUMP * sent_gap:
                continue
        size = i - start
        if size > best[0]:
            best = (size, ticks[i - 1].arrived - ticks[start].arrived, ticks[start].arrived)
        start = i
    return best


def _compression(obs: Observation) -> tuple[bool, Finding]:
    encoding = _header(obs.headers, "Content-Encoding")
    if encoding and encoding.strip().lower() != "identity":
        said = f"Content-Encoding: {encoding}"
    elif obs.gzip_magic:
        said = "the body is gzip (bytes 1f 8b) though no Content-Encoding header says so"
    else:
        return False, Finding("compression", "ok", "not compressed")
    untimed = "" if obs.decodable else "; doctor cannot decode it, so events were not timed"
    text = (
        f"compressed: {said}. The sidecar never compresses, so the chain does; a compressor "
        "holds events until its block fills unless it flushes each one. Turn compression "
        f"off for text/event-stream (nginx: gzip off){untimed}"
    )
    return True, Finding("compression", "problem", text)


def _silence(obs: Observation) -> tuple[float | None, Finding]:
    if obs.end == "probe_end":
        text = f"kept open for the whole {obs.silence:g} s test of silence"
        return None, Finding("silence", "ok", text)
    if obs.end == "timeout":
        text = f"no end: doctor stopped waiting after {obs.ended_at:.0f} s (--timeout)"
        return None, Finding("silence", "note", text)
    if not obs.ticks:
        text = (
            f"closed after {obs.ended_at:.1f} s before any event arrived: "
            "cannot tell when the silence began"
        )
        return None, Finding("silence", "note", text)
    cut = max(0.0, obs.ended_at - _silence_start(obs))
    short = ""
    if len(obs.ticks) < obs.events:
        short = f" (after {len(obs.ticks)} of {obs.events} events)"
    text = (
        f"cut: the chain closed the stream after {cut:.1f} s without data{short}, "
        f"before the probe's {obs.silence:g} s of silence were over"
    )
    return cut, Finding("silence", "note", text)


def _silence_start(obs: Observation) -> float:
    """When the last data left the sidecar, on the client's clock.

    The server's own times of the probe event and the last tick give the
    distance between them, free of clock skew; it is counted from when the
    request went out (the probe starts about one network trip later, so a cut
    comes out that much longer). Arrival times are no anchor: a buffering
    chain delivers events long after they were sent.
    """
    if obs.server_start is not None:
        return max(t.sent for t in obs.ticks) - obs.server_start
    return max(t.arrived for t in obs.ticks)


def _heartbeat(obs: Observation, cut: float | None) -> tuple[bool | None, Finding]:
    beat = obs.heartbeat
    if cut is None:
        if beat is None:
            return None, Finding("heartbeat", "note", "interval unknown (pass --heartbeat)")
        if beat == 0:
            text = f"off: silent streams live as long as the chain allows (over {obs.silence:g} s)"
            return None, Finding("heartbeat", "note", text)
        if obs.end != "probe_end":
            text = f"cannot tell whether {beat:g} s is short enough: no silence was measured"
            return None, Finding("heartbeat", "note", text)
        if beat <= SAFETY * obs.silence + SLACK:
            text = f"{beat:g} s is short enough: the chain kept {obs.silence:g} s of silence"
            return True, Finding("heartbeat", "ok", text)
        text = (
            f"cannot tell whether {beat:g} s is short enough: the test held only "
            f"{obs.silence:g} s of silence; run with --max-silence {math.ceil(beat / SAFETY) + 5}"
        )
        return None, Finding("heartbeat", "note", text)
    limit = SAFETY * cut + SLACK
    advice = _round_down(limit)
    if beat is None:
        text = f"interval unknown (pass --heartbeat); it must be {advice:g} s or less here"
        return None, Finding("heartbeat", "note", text)
    if 0 < beat <= limit:
        text = f"{beat:g} s is short enough for this chain (at most half its {cut:.1f} s cut-off)"
        return True, Finding("heartbeat", "ok", text)
    said = "off" if beat == 0 else f"{beat:g} s is too long"
    text = (
        f"{said}: this chain cuts silent streams after {cut:.1f} s, so quiet streams die; "
        f"set heartbeat.interval to {advice:g}s or less (half the cut-off), "
        "or raise the chain's idle timeout"
    )
    return False, Finding("heartbeat", "problem", text)


def _round_down(seconds: float) -> float:
    if seconds >= 2:
        return float(math.floor(seconds))
    return max(0.1, math.floor(seconds * 10) / 10)


#: The headers the sidecar sets on every stream, and what it sets them to.
_SIDECAR_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def _headers(obs: Observation) -> Finding:
    parts = []
    for name, sent in _SIDECAR_HEADERS.items():
        value = _header(obs.headers, name)
        if value is None:
            why = " (nginx acts on it and removes it)" if name == "X-Accel-Buffering" else ""
            parts.append(f"{name} absent{why}")
        elif value.replace(" ", "").lower() != sent.replace(" ", "").lower():
            parts.append(f"{name}: {value} (the sidecar sent {sent!r})")
        else:
            parts.append(f"{name}: {value}")
    for name in ("Content-Length", "Via"):
        value = _header(obs.headers, name)
        if value is not None:
            parts.append(f"{name}: {value}")
    return Finding("headers", "note", "; ".join(parts))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def _dur(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
