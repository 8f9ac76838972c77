"""How late events arrived: buffering (held and released in clumps) and a constant delay.

Strategy: lateness needs a zero. Relative to the least-delayed event it shows
only the spread, so a chain that holds every event by the same 200 ms looks
perfect, and a held response's first event looks on time. Two better zeros:
the probe's own send stamps, when the server's clock agrees with ours (its
``server_time`` lies between our request and the probe event's arrival), and
otherwise the response head, which the probe writes together with its first
events, so the first tick is as late as it arrived after the head.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

from sidecar.doctor.hops import advice
from sidecar.doctor.model import CLOCK_TOLERANCE, CLUMP, LATE, Finding, Observation, Tick, dur


def clocks_agree(obs: Observation) -> bool:
    if obs.request_wall is None or obs.server_start is None or obs.info_at is None:
        return False
    low = obs.request_wall - CLOCK_TOLERANCE
    return low <= obs.server_start <= obs.request_wall + obs.info_at + CLOCK_TOLERANCE


def lateness(obs: Observation, ticks: Sequence[Tick]) -> tuple[list[float], str] | None:
    """Each tick's delay on the path (seconds), and how it was measured; None: no zero known."""
    if clocks_agree(obs):
        assert obs.request_wall is not None
        wall = obs.request_wall
        return [max(0.0, wall + t.arrived - t.sent) for t in ticks], "by the probe's send stamps"
    if obs.head_at is None or obs.server_start is None:
        return None
    first = ticks[0]
    # The probe writes the head, the probe event and the first tick back to back.
    zero = first.arrived - obs.head_at - max(0.0, first.sent - obs.server_start)
    offset = zero - (first.arrived - first.sent)
    return [max(0.0, t.arrived - t.sent + offset) for t in ticks], "after the response head"


def buffering(obs: Observation) -> tuple[bool | None, float | None, Finding, Finding]:
    """(buffered, constant delay, the buffering finding, the delay finding)."""
    ticks = sorted(obs.ticks, key=lambda t: t.n)
    unknown = Finding("delay", "note", "cannot tell")
    if not obs.decodable:
        text = "cannot tell: doctor cannot decode the body"
        return None, None, Finding("buffering", "note", text), unknown
    if not ticks:
        if obs.events == 0:
            return None, None, Finding("buffering", "note", "cannot tell: no events"), unknown
        # The probe writes its first events at once: nothing at all is held somewhere.
        text = (
            f"buffered: not one event arrived in {obs.ended_at:.1f} s, though the probe "
            f"sends its first at once; {_BUFFER} ({advice(obs.headers, 'buffering')})"
        )
        return True, None, Finding("buffering", "problem", text), unknown
    measured = lateness(obs, ticks)
    if len(ticks) == 1:
        text = f"cannot tell from one event (it arrived after {dur(ticks[0].arrived)})"
        return None, None, Finding("buffering", "note", text), _delay(obs, measured)
    base = min(t.arrived - t.sent for t in ticks)
    spread = [t.arrived - t.sent - base for t in ticks]
    sent_gap = statistics.median(b.sent - a.sent for a, b in itertools.pairwise(ticks))
    tolerance = max(LATE, 0.5 * sent_gap)
    if sum(s > tolerance for s in spread) >= max(2, 0.2 * len(ticks)):
        lags = measured[0] if measured else spread
        late = [lag for lag in lags if lag > tolerance]
        size, width, at = _largest_clump(ticks)
        clump = f" and in clumps: {size} within {dur(width)} after {at:.1f} s" if size > 1 else ""
        span = dur(max(late)) if len(late) < 2 else f"{dur(min(late))} to {dur(max(late))}"
        how = f", {measured[1]}" if measured else ""
        text = (
            f"buffered: {len(late)} of {len(ticks)} events arrived late ({span}{how}){clump}, "
            f"though they were sent {dur(sent_gap)} apart; {_BUFFER} "
            f"({advice(obs.headers, 'buffering')})"
        )
        held = Finding("delay", "note", "see buffering")
        return True, None, Finding("buffering", "problem", text), held
    arrived_gap = statistics.median(b.arrived - a.arrived for a, b in itertools.pairwise(ticks))
    text = (
        f"not buffered: events arrived {dur(arrived_gap)} apart as sent (none more than "
        f"{dur(max(spread))} later than the others), the first {ticks[0].arrived:.2f} s "
        "after the request"
    )
    found = _delay(obs, measured)
    delay = min(measured[0]) if measured else None
    return False, delay, Finding("buffering", "ok", text), found


_BUFFER = "something on the path holds the stream until a buffer fills or the stream ends"


def _delay(obs: Observation, measured: tuple[list[float], str] | None) -> Finding:
    if measured is None:
        return Finding("delay", "note", "cannot tell: the probe sent no server_time")
    lags, how = measured
    if min(lags) <= LATE:
        text = f"none: every event arrived within {dur(max(lags))} of being sent ({how})"
        return Finding("delay", "ok", text)
    text = (
        f"every event arrived at least {dur(min(lags))} late (up to {dur(max(lags))}, {how}): "
        "a hop holds each one for a while, usually a Nagle-style delay (waiting for more "
        "bytes to fill a packet) or a compressor that keeps one event back until the next; "
        f"{advice(obs.headers, 'delay')}"
    )
    return Finding("delay", "problem", text)


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
