"""What the doctor observed and what it reports: plain data, shared by the analysis and the I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

PROBE_PATH = "/_sse-sidecar/probe"

#: A heartbeat must come within this share of the chain's cut-off, so that a
#: late one (a busy loop, a slow network) still lands in time.
SAFETY = 0.5
#: Measurement slack: timers of proxies fire a few ms early or late.
SLACK = 0.05
#: An event this much later than it was sent arrived late (at least; half the
#: send interval when that is longer).
LATE = 0.1
#: Two events arrived together when their arrival gap is under this share of their send gap.
CLUMP = 0.25
#: The server's clock agrees with ours when its stamp of the probe event lies
#: between our request and the event's arrival, within this much.
CLOCK_TOLERANCE = 0.02

End = Literal["probe_end", "closed", "timeout"]
Verdict = Literal["ok", "problem", "note", "untested"]
#: What the front said about HTTP/2: ALPN over TLS ("h2", "http/1.1"), or the
#: answer to an h2c upgrade on plain http ("h2c", "http/1.1"); None: not checked.
Http2 = Literal["h2", "h2c", "http/1.1"] | None


class DoctorError(Exception):
    """A usage or connection problem: no report is possible (exit code 2)."""


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
    #: The client's wall clock (time.time()) when the request went out.
    request_wall: float | None = None
    #: When the response head and the probe event arrived (client times).
    head_at: float | None = None
    info_at: float | None = None
    #: The probe said it sends a comment line, and whether it arrived.
    comment_sent: bool = False
    comment_seen: bool = False
    #: The URL was https, and what the front said about HTTP/2.
    tls: bool = False
    http2: Http2 = None


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
    #: Seconds after the request at which the chain closes every stream (None: no age cap).
    age_cap: float | None = None
    #: Seconds every event arrived late by, at least (None: unknown).
    delay: float | None = None

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "problem"]

    @property
    def untested(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "untested"]

    @property
    def exit_code(self) -> int:
        """1: a problem found; 2: part of the test could not run; 0: no problem."""
        if self.problems:
            return 1
        return 2 if self.untested else 0

    def render(self, url: str) -> str:
        lines = [f"sse-sidecar doctor: {url}"]
        for f in self.findings:
            lines.append(f"  {f.topic + ':':<13}{_LABEL[f.verdict]:<10}{f.text}")
        problems = self.problems
        if problems:
            topics = ", ".join(f.topic for f in problems)
            lines.append(f"result: {len(problems)} problem(s) found ({topics})")
        elif self.untested:
            topics = ", ".join(f.topic for f in self.untested)
            lines.append(f"result: could not test ({topics})")
        else:
            lines.append("result: no problem found")
        return "\n".join(lines)


_LABEL: dict[Verdict, str] = {
    "ok": "ok",
    "problem": "PROBLEM",
    "note": "note",
    "untested": "UNTESTED",
}


def header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def dur(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
