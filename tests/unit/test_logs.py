"""Log lines: one write each, so processes sharing stdout never split each other's lines."""

from __future__ import annotations

import sys

import structlog

from sidecar.config import Logging
from sidecar.logs import configure


class _Writes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


def test_each_log_line_is_one_write_with_its_newline(monkeypatch):
    out = _Writes()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        configure(Logging(level="info", format="json"))
        log = structlog.get_logger("sse_sidecar")
        log.info("stream_start", route="r")
        log.info("stream_end", route="r")
    finally:
        structlog.reset_defaults()
    assert len(out.calls) == 2
    assert all(c.startswith("{") and c.endswith("}\n") and c.count("\n") == 1 for c in out.calls)
