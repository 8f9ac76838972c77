"""The benchmark report's targets over repeated rounds: the median of same-round ratios."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report


def _result(target: str, cpu: float, p99: float, round_: int | None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "scenario": "steady",
        "target": target,
        "proxy": {"cpu_us_per_event": cpu, "cpu_s": cpu / 10, "rss_peak_kib": 1024},
        "latency_ms": {"p50": p99 / 2, "p99": p99},
        "ttfb_ms": {"p50": 1.0, "p99": 2.0},
        "events": 10,
        "expected": 10,
        "all_delivered": True,
        "events_per_s": 100.0,
        "client_cpu_s": 0.1,
        "producer_cpu_s": 0.1,
        "errors": {},
    }
    if round_ is not None:
        r["round"] = round_
    return r


def _doc(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"results": results}


def test_one_round_is_the_plain_ratio():
    doc = _doc([_result("nginx", 10, 1.0, None), _result("sidecar", 15, 2.0, None)])
    assert report.paired(doc, "steady", "nginx", "sidecar", "proxy", "cpu_us_per_event") == (
        10,
        15,
        1.5,
    )


def test_the_median_of_same_round_ratios_not_the_ratio_of_medians():
    # nginx moves between rounds and the sidecar with it: each round's ratio
    # is 1.5, though the medians of the values alone give 20 / 10 = 2.
    doc = _doc(
        [
            _result("nginx", 10, 1.0, 1),
            _result("sidecar", 15, 3.0, 1),
            _result("nginx", 20, 1.0, 2),
            _result("sidecar", 30, 1.5, 2),
            _result("nginx", 5, 2.0, 3),
            _result("sidecar", 7.5, 2.5, 3),
        ]
    )
    n, s, r = report.paired(doc, "steady", "nginx", "sidecar", "proxy", "cpu_us_per_event")
    assert (n, s) == (10, 15)
    assert r == pytest.approx(1.5)
    _, _, extra = report.paired(doc, "steady", "nginx", "sidecar", "latency_ms", "p99", diff=True)
    assert extra == pytest.approx(0.5)  # of +2.0, +0.5, +0.5


def test_a_round_a_path_missed_is_left_out_of_the_ratios():
    doc = _doc(
        [
            _result("nginx", 10, 1.0, 1),
            _result("sidecar", 20, 1.0, 1),
            _result("nginx", 10, 1.0, 2),
        ]
    )
    assert report.paired(doc, "steady", "nginx", "sidecar", "proxy", "cpu_us_per_event")[2] == 2.0
    assert report.paired(doc, "steady", "nginx", "session", "proxy", "cpu_us_per_event") == (
        10,
        None,
        None,
    )


def test_targets_are_judged_on_the_median_ratio_and_rows_name_their_round():
    rounds = [(10, 14), (10, 14), (10, 20)]  # one noisy round over the line
    results = []
    for k, (n, s) in enumerate(rounds, 1):
        results += [_result("nginx", n, 1.0, k), _result("sidecar", s, 1.0, k)]
    doc = _doc(results)
    plain = next(t for t in report.targets(doc) if t["target"] == "steady: CPU per event")
    assert plain["sidecar/nginx"] == pytest.approx(1.4)
    assert plain["ok"] is True
    rows = report.flow_table(doc)
    assert any(row.startswith("| steady #3 | sidecar |") for row in rows)
