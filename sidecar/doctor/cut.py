"""When the chain closed the stream, why (idle cut or age cap), and what the heartbeat can do.

Strategy: an idle cut comes a fixed time after the last data; an age cap a
fixed time after the request, data flowing or not. A close while ticks were
still arriving (or after less silence than the stream had already survived
between two ticks) is an age cap. A close in the silence fits both, so the
doctor runs a second probe with a burst of a different length: the measure
that stays the same (the silence before the cut, or the age) names the cause.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sidecar.doctor.hops import advice
from sidecar.doctor.model import SAFETY, SLACK, Finding, Observation

Kind = Literal["idle", "age", "unsure", "early"]


@dataclass(frozen=True)
class Cut:
    kind: Kind
    #: The silence before the cut (idle, unsure) or the age at the cut (age, early).
    seconds: float
    #: The age at the cut, for the unsure case's alternative reading.
    age: float
    why: str


def silence_start(obs: Observation) -> float:
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


def second_burst(events: int, interval: float) -> tuple[int, float]:
    """Probe parameters for a burst at least about a second longer or shorter than the first."""
    if (events - 1) * interval >= 1.5:
        return max(2, math.ceil(events / 2)), interval
    return min(1000, events + math.ceil(1.0 / interval)), interval


def needs_second_run(obs: Observation) -> bool:
    """Whether only a second probe can tell an idle cut from an age cap."""
    return _one(obs) == "silent"


def _one(obs: Observation) -> Literal["silent", "flowing", "early"] | None:
    if obs.end != "closed" or not obs.ticks:
        return None
    if len(obs.ticks) < 2:
        return "early"
    if len(obs.ticks) < obs.events:
        return "flowing"
    # It survived gaps of `interval` in the burst: a shorter silence cannot have cut it.
    if obs.ended_at - silence_start(obs) < obs.interval - SLACK:
        return "flowing"
    return "silent"


def classify(runs: Sequence[Observation]) -> Cut | None:
    """The cut the runs show (None: the stream was not cut)."""
    kinds = [(_one(r), r) for r in runs]
    cut = [(k, r) for k, r in kinds if k is not None]
    if not cut:
        return None
    flowing = [r for k, r in cut if k == "flowing"]
    if flowing:
        age = min(r.ended_at for r in flowing)
        return Cut("age", age, age, "while events were still arriving")
    silent = [r for k, r in cut if k == "silent"]
    if len(silent) >= 2:
        a, b = silent[0], silent[1]
        quiet = (a.ended_at - silence_start(a), b.ended_at - silence_start(b))
        if abs(quiet[0] - quiet[1]) <= abs(a.ended_at - b.ended_at):
            why = "a second probe with a longer or shorter burst was cut after the same silence"
            return Cut("idle", min(quiet), min(a.ended_at, b.ended_at), why)
        age = min(a.ended_at, b.ended_at)
        why = "bursts of different lengths were cut at the same age, after different silences"
        return Cut("age", age, age, why)
    if silent:
        r = silent[0]
        alone = max(0.0, r.ended_at - silence_start(r))
        return Cut("unsure", alone, r.ended_at, "")
    r = cut[0][1]
    return Cut("early", r.ended_at, r.ended_at, "")


def silence(obs: Observation, cut: Cut | None) -> Finding:
    if cut is None:
        if obs.end == "probe_end":
            return Finding(
                "silence", "ok", f"kept open for the whole {obs.silence:g} s test of silence"
            )
        if obs.end == "timeout":
            quiet = max(0.0, obs.ended_at - silence_start(obs)) if obs.ticks else 0.0
            text = (
                f"could not test: doctor stopped waiting after {obs.ended_at:.1f} s (--timeout), "
                f"{quiet:.1f} s into the probe's {obs.silence:g} s of silence; give --timeout "
                "longer than the test, or a shorter --max-silence"
            )
            return Finding("silence", "untested", text)
        text = (
            f"closed after {obs.ended_at:.1f} s before any event arrived: "
            "cannot tell when the silence began"
        )
        return Finding("silence", "note", text)
    if cut.kind == "age":
        text = (
            f"age cap: the chain closes a stream about {cut.seconds:.1f} s after it opened, "
            f"data flowing or not ({cut.why}); no heartbeat helps against that. Turn on resume "
            "(resume.enabled: true with a session key, and a short stream.retry) so clients "
            "reconnect and carry on where they were, or raise the cap: "
            f"{advice(obs.headers, 'age_cap')}"
        )
        return Finding("silence", "problem", text)
    if cut.kind == "early":
        text = (
            f"closed {cut.seconds:.1f} s after the request, after the first event: an idle "
            f"cut shorter than the {obs.interval:g} s between events, or an age cap that short; "
            "run again with a shorter --interval to tell"
        )
        return Finding("silence", "problem", text)
    short = ""
    if cut.kind == "idle":
        short = f" (an idle cut: {cut.why})"
    else:
        short = (
            f" (an idle cut, or an age cap of {cut.age:.1f} s from the request: doctor "
            "could not run a second probe to tell)"
        )
    text = (
        f"cut: the chain closed the stream after {cut.seconds:.1f} s without data{short}, "
        f"before the probe's {obs.silence:g} s of silence were over"
    )
    return Finding("silence", "note", text)


def heartbeat(obs: Observation, cut: Cut | None) -> tuple[bool | None, Finding]:
    beat = obs.heartbeat
    if cut is None or cut.kind in ("age", "early"):
        return _uncut(obs, cut)
    # The stream survived gaps of `interval`: that much is proven safe, whatever the maths says.
    half = _round_down(SAFETY * cut.seconds + SLACK)
    advised = max(half, round(obs.interval, 2))
    limit = max(SAFETY * cut.seconds + SLACK, obs.interval)
    if beat is None:
        text = f"interval unknown (pass --heartbeat); it must be {advised:g} s or less here"
        return None, Finding("heartbeat", "note", text)
    if 0 < beat <= limit:
        text = (
            f"{beat:g} s is short enough for this chain (at most half its "
            f"{cut.seconds:.1f} s cut-off)"
        )
        return True, Finding("heartbeat", "ok", text)
    said = "off" if beat == 0 else f"{beat:g} s is too long"
    why = "half the cut-off" if advised == half else "the gap between events it already kept"
    text = (
        f"{said}: this chain cuts silent streams after {cut.seconds:.1f} s, so quiet streams "
        f"die; set heartbeat.interval to {advised:g}s or less ({why}), or raise the "
        f"chain's idle timeout: {advice(obs.headers, 'idle_cut')}"
    )
    return False, Finding("heartbeat", "problem", text)


def _uncut(obs: Observation, cut: Cut | None) -> tuple[bool | None, Finding]:
    beat = obs.heartbeat
    if cut is not None and cut.kind == "age":
        text = "cannot help: the chain cut the stream by its age, not its silence"
        return None, Finding("heartbeat", "note", text)
    if cut is not None:
        return None, Finding("heartbeat", "note", "cannot tell: the stream was cut too early")
    if beat is None:
        return None, Finding("heartbeat", "note", "interval unknown (pass --heartbeat)")
    if beat == 0:
        text = f"off: silent streams live as long as the chain allows (over {obs.silence:g} s)"
        return None, Finding("heartbeat", "note", text)
    if obs.end != "probe_end":
        quiet = max(0.0, obs.ended_at - silence_start(obs)) if obs.ticks else 0.0
        text = (
            f"cannot tell whether {beat:g} s is short enough: the test stopped after "
            f"{quiet:.1f} s of silence, before the chain did anything"
        )
        return None, Finding("heartbeat", "note", text)
    if beat <= SAFETY * obs.silence + SLACK:
        text = f"{beat:g} s is short enough: the chain kept {obs.silence:g} s of silence"
        return True, Finding("heartbeat", "ok", text)
    text = (
        f"cannot tell whether {beat:g} s is short enough: the test held only "
        f"{obs.silence:g} s of silence; run with --max-silence {math.ceil(beat / SAFETY) + 5}"
    )
    return None, Finding("heartbeat", "note", text)


def _round_down(seconds: float) -> float:
    if seconds >= 2:
        return float(math.floor(seconds))
    return max(0.1, math.floor(seconds * 10) / 10)
