"""``sse-sidecar doctor`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys

from yarl import URL

from sidecar.config import parse_duration
from sidecar.doctor.analysis import PROBE_PATH, DoctorError, Observation, analyse
from sidecar.doctor.cut import needs_second_run, second_burst
from sidecar.doctor.observe import Options, http2_offered, observe, probe_url
from sidecar.errors import ConfigError

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
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="trust this CA bundle (PEM) for an https front with a private CA",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="do not check the front's TLS certificate"
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
    if args.cacert is not None and not os.path.isfile(args.cacert):
        parser.error(f"--cacert {args.cacert}: no such file")
    return Options(
        events=args.events,
        interval=args.interval,
        max_silence=args.max_silence,
        size=args.size,
        heartbeat=args.heartbeat,
        timeout=args.timeout,
        cacert=args.cacert,
        insecure=args.insecure,
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
        if opts.timeout is not None and opts.timeout < opts.test_length:
            print(
                f"sse-sidecar doctor: --timeout {opts.timeout:g}s is shorter than the test "
                f"({opts.test_length:g} s): the silence cannot be tested in full",
                file=sys.stderr,
            )
        print(f"reading {url} (up to {opts.total_timeout:g} s)...", file=sys.stderr)
        observation, again = asyncio.run(_run(url, opts))
    except DoctorError as exc:
        print(f"sse-sidecar doctor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sse-sidecar doctor: interrupted", file=sys.stderr)
        return 2
    report = analyse(observation, again)
    print(report.render(str(url)))
    return report.exit_code


async def _run(url: URL, opts: Options) -> tuple[Observation, list[Observation]]:
    """The probe (with the HTTP/2 check beside it) and, when a cut needs it, a second probe."""
    first, http2 = await asyncio.gather(observe(url, opts), http2_offered(url, opts))
    first = dataclasses.replace(first, http2=http2)
    if not needs_second_run(first):
        return first, []
    # Closed in the silence: an idle cut or an age cap. A burst of another
    # length tells them apart, and needs no more silence than the cut took.
    events, interval = second_burst(first.events, first.interval)
    silence = min(opts.max_silence, first.ended_at + 5.0)
    retry = dataclasses.replace(opts, events=events, interval=interval, max_silence=silence)
    print("closed in the silence: a second probe with another burst tells why...", file=sys.stderr)
    try:
        return first, [await observe(probe_url(str(url), retry), retry)]
    except DoctorError as exc:
        print(f"sse-sidecar doctor: the second probe failed: {exc}", file=sys.stderr)
        return first, []
