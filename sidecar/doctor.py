"""``sse-sidecar doctor URL``: what the chain in front of the sidecar does to a stream.

Strategy: read the sidecar's probe stream (sidecar/probe.py) through the
user's real front chain, note when each event arrives, and hand that
:class:`Observation` to :func:`analyse`, a pure function that says in plain
words whether the chain buffers, compresses, how long it keeps a silent stream
open, and whether the heartbeat interval is short enough for it. Only
:func:`observe` does I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from yarl import URL

from sidecar.config import parse_duration
from sidecar.errors import ConfigError, ProtocolError
from sidecar.sse import Decoder, Event

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


# --- reading the probe (I/O) -------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    events: int = 20
    interval: float = 0.25
    max_silence: float = 120.0
    size: int = 0
    heartbeat: float | None = None
    timeout: float | None = None
    connect_timeout: float = 10.0

    @property
    def total_timeout(self) -> float:
        return self.timeout or self.events * self.interval + self.max_silence + 15.0


REQUEST_HEADERS = {
    "Accept": "text/event-stream",
    "Cache-Control": "no-cache",
    # What browsers offer, so a chain that compresses for them shows it here.
    "Accept-Encoding": "gzip, deflate, br",
}


def probe_url(url: str, opts: Options) -> URL:
    """The URL to read: ``url`` (its path defaults to the probe's) with the probe's parameters."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise DoctorError(f"not a URL: {url!r} ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DoctorError(f"not an http(s) URL: {url!r}")
    if parsed.path in ("", "/"):
        parsed = parsed.with_path(PROBE_PATH)
    return parsed.update_query(
        events=opts.events, interval=f"{opts.interval:g}", silence=f"{opts.max_silence:g}"
    ).update_query({"size": opts.size} if opts.size else {})


class _Collector:
    """Decodes the (maybe compressed) body as it arrives and notes the probe's events."""

    def __init__(self, encoding: str | None) -> None:
        self.encoding = (encoding or "").strip().lower()
        self.inflate: Any = None
        self.head = b""
        self.decided = False
        self.decodable = True
        self.gzip_magic = False
        self.decoder = Decoder(max_line_bytes=256 * 1024, max_event_bytes=256 * 1024)
        self.ticks: list[Tick] = []
        self.info: dict[str, Any] = {}
        self.others = 0
        self.done = False

    def feed(self, chunk: bytes, now: float) -> None:
        if not self.decided:
            self.head += chunk
            if len(self.head) < 2:
                return
            chunk, self.head = self.head, b""
            self._decide(chunk)
        if not self.decodable:
            return
        if self.inflate is not None:
            try:
                chunk = self.inflate.decompress(chunk)
            except zlib.error:
                self.decodable = False
                return
        try:
            items = self.decoder.feed(chunk)
        except ProtocolError as exc:
            raise DoctorError(f"the stream is not a valid event stream: {exc}") from None
        for item in items:
            if isinstance(item, Event):
                self._event(item, now)

    def _decide(self, head: bytes) -> None:
        self.decided = True
        self.gzip_magic = head[:2] == b"\x1f\x8b"
        if self.encoding in ("gzip", "x-gzip", "deflate") or self.gzip_magic:
            # 32 + MAX_WBITS: zlib or gzip framing, whichever the header says.
            self.inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)
        elif self.encoding not in ("", "identity"):
            self.decodable = False  # br, zstd: no decoder in the standard library

    def _event(self, event: Event, now: float) -> None:
        try:
            payload = json.loads(event.data or "")
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            self.others += 1
            return
        if event.event == "probe":
            self.info = payload
        elif event.event == "tick" and _num(payload.get("n")) and _num(payload.get("sent")):
            self.ticks.append(Tick(int(payload["n"]), float(payload["sent"]), now))
        elif event.event == "probe_end":
            self.done = True
        else:
            self.others += 1


def _num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def observe(url: URL, opts: Options) -> Observation:
    """Read the probe stream at ``url`` once; raise :class:`DoctorError` if that is impossible."""
    loop = asyncio.get_running_loop()
    origin = [loop.time()]

    async def headers_sent(*_: object) -> None:
        origin.append(loop.time())  # after connect and TLS: time zero of the observation

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)

    def now() -> float:
        return loop.time() - origin[-1]

    collector: _Collector | None = None
    end: End = "closed"
    ended_at = 0.0
    response_headers: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout)
    try:
        async with (
            asyncio.timeout(opts.total_timeout),
            aiohttp.ClientSession(
                auto_decompress=False, timeout=timeout, trace_configs=[trace]
            ) as http,
            http.get(url, headers=REQUEST_HEADERS) as resp,
        ):
            await _check(resp, url)
            response_headers = dict(resp.headers)
            collector = _Collector(resp.headers.get("Content-Encoding"))
            try:
                async for chunk in resp.content.iter_any():
                    collector.feed(chunk, now())
                    if collector.done:
                        end = "probe_end"
                        break
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                pass  # the chain cut the stream: what the silence test looks for
            ended_at = now()
    except TimeoutError:
        if collector is None:
            raise DoctorError(f"no answer from {url} within {opts.total_timeout:g} s") from None
        end, ended_at = "timeout", now()
    except aiohttp.ClientConnectorError as exc:
        raise DoctorError(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}") from None
    except aiohttp.ClientError as exc:
        raise DoctorError(f"request to {url} failed: {exc}") from None
    assert collector is not None  # every path that leaves it None raised
    if not collector.ticks and not collector.info and collector.others:
        raise DoctorError(
            f"{url} streams events, but not the probe's: point doctor at the front's URL of "
            f"the sidecar's probe path ({PROBE_PATH})"
        )
    info = collector.info
    return Observation(
        ticks=tuple(collector.ticks),
        headers=response_headers,
        ended_at=ended_at,
        end=end,
        events=int(_pick(info, "events", opts.events)),
        interval=_pick(info, "interval", opts.interval),
        silence=_pick(info, "silence", opts.max_silence),
        heartbeat=opts.heartbeat
        if opts.heartbeat is not None
        else _opt(info, "heartbeat_interval"),
        server_start=_opt(info, "server_time"),
        gzip_magic=collector.gzip_magic,
        decodable=collector.decodable,
    )


def _opt(info: Mapping[str, Any], key: str) -> float | None:
    value = info.get(key)
    return float(value) if isinstance(value, int | float) and _num(value) else None


def _pick(info: Mapping[str, Any], key: str, default: float) -> float:
    value = _opt(info, key)
    return default if value is None else value


async def _check(resp: aiohttp.ClientResponse, url: URL) -> None:
    hint = (
        f"expected the sidecar's probe stream: is the probe route on, and does the front "
        f"pass {url.path} to the sidecar?"
    )
    if resp.status != 200:
        body = await resp.content.read(300)
        snippet = " ".join(body.decode("utf-8", "replace").split())[:120]
        detail = f" ({snippet})" if snippet and resp.content_type != "text/html" else ""
        raise DoctorError(f"{url} answered {resp.status} {resp.reason}{detail}; {hint}")
    if resp.content_type != "text/event-stream":
        raise DoctorError(f"{url} answered {resp.content_type}, not text/event-stream; {hint}")


# --- command line ------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-sidecar doctor",
        description=(
            "Open a stream through your front chain (nginx, ingress, load balancer) to the "
            "sidecar's probe route and report whether the chain buffers or compresses it, how "
            "long it keeps a silent stream open, and whether the heartbeat is short enough."
        ),
        epilog=(
            f"URL: the front's address of the sidecar's probe path ({PROBE_PATH}; used when URL "
            "has no path). Exit status: 0 no problem, 1 problem found, 2 usage or connection error."
        ),
    )
    parser.add_argument("url", metavar="URL")
    parser.add_argument(
        "--max-silence",
        type=_duration,
        default=120.0,
        metavar="S",
        help="longest silence to test, at most 600s (default: %(default)gs)",
    )
    parser.add_argument(
        "--heartbeat",
        type=_duration,
        metavar="S",
        help="heartbeat interval to judge (default: the one the probe reports)",
    )
    parser.add_argument(
        "--events", type=int, default=20, metavar="N", help="events in the burst (default: 20)"
    )
    parser.add_argument(
        "--interval",
        type=_duration,
        default=0.25,
        metavar="S",
        help="time between events (default: %(default)gs)",
    )
    parser.add_argument(
        "--size", type=int, default=0, metavar="BYTES", help="padding per event (default: 0)"
    )
    parser.add_argument(
        "--timeout",
        type=_duration,
        metavar="S",
        help="give up after this long (default: the test's length + 15s)",
    )
    return parser


def _options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Options:
    if not 2 <= args.events <= 1000:
        parser.error("--events must be between 2 and 1000")
    if not 0.01 <= args.interval <= 10:
        parser.error("--interval must be between 10ms and 10s")
    if not 0 < args.max_silence <= 600:
        parser.error("--max-silence must be above 0 and at most 600s")
    if not 0 <= args.size <= 64 * 1024:
        parser.error("--size must be between 0 and 65536")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be above 0")
    return Options(
        events=args.events,
        interval=args.interval,
        max_silence=args.max_silence,
        size=args.size,
        heartbeat=args.heartbeat,
        timeout=args.timeout,
    )


def main(argv: list[str] | None = None) -> int:
    """``sse-sidecar doctor URL [options]``; returns the exit status (0, 1 or 2)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        opts = _options(parser, args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        url = probe_url(args.url, opts)
        print(f"reading {url} (up to {opts.total_timeout:g} s)...", file=sys.stderr)
        observation = asyncio.run(observe(url, opts))
    except DoctorError as exc:
        print(f"sse-sidecar doctor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sse-sidecar doctor: interrupted", file=sys.stderr)
        return 2
    report = analyse(observation)
    print(report.render(str(url)))
    return report.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
