"""Summarise a py-spy ``--format raw`` profile: where the sidecar's CPU goes.

Each line of the file is a stack (``frame;frame;…``) and a sample count; only
on-CPU samples are recorded (py-spy drops idle ones by default), so shares are
shares of the process's CPU time.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` → ``func (file.py)``, lines merged."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


#: Where a sample's CPU goes: the deepest frame matching one of these decides.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # py-spy --native: the C frames are there, so system calls get their own line.
    ("system calls: write() (with loopback delivery), read(), epoll", (
        "write (libc", "read (libc", "epoll_pwait (libc", "writev (libc", "recv (libc",
        "send (libc")),
    ("garbage collector (CPython)", ("gc_collect", "gc_collect_main")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging (structlog)", ("structlog/", "logging/")),
    ("asyncio.timeout around reads and writes", ("asyncio/timeouts.py",)),
    # The Event named tuple is built in the decoder (its __new__ is "<lambda> (<string>)").
    ("SSE decoder (sidecar/sse/decoder.py)", ("sse/decoder.py",)),
    ("SSE encoder (sidecar/sse/encoder.py)", ("sse/encoder.py",)),
    ("normaliser: raw check, comment rewrite (sidecar/normalize.py)", ("sidecar/normalize.py",)),
    ("callback path: forward and write (sidecar/stream/splice.py, sink.py)", (
        "sidecar/stream/splice.py", "sidecar/stream/sink.py", "sidecar/stream/state.py")),
    ("timer wheel (sidecar/timers.py)", ("sidecar/timers.py",)),
    ("upstream read: httptools parser, Upstream protocol (upstream/http.py)", (
        "upstream/http.py", "httptools", "llhttp", "parser.c")),
    ("client write: aiohttp writer", ("http_writer.py", "web_response.py")),
    ("stream set-up: headers, request, response head", (
        "sidecar/headers.py", "yarl/", "multidict/", "web_request.py", "helpers.py")),
    ("sidecar stream loop (stream/, proxy.py own lines)", (
        "sidecar/stream/", "sidecar/proxy.py", "sidecar/")),
    ("aiohttp server (other)", ("aiohttp/",)),
    ("event loop: uvloop/asyncio (Python-visible part)", ("asyncio/", "uvloop/")),
)  # fmt: skip


def groups(path: Path) -> tuple[Counter[str], int]:
    """Samples per :data:`GROUPS` entry (``other`` for the rest), and the total."""
    out: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        out[_group(stack.split(";"))] += int(count)
    return out, total


def _group(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, patterns in GROUPS:
            if any(p in frame for p in patterns):
                return name
    return "other"


def load(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """(self samples per function, inclusive samples per function, total samples)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f]
        total += n
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return own, incl, total


def summary(path: Path, top: int = 15) -> str:
    own, incl, total = load(path)
    if not total:
        return "(no samples)"
    by_group, _ = groups(path)
    lines = [f"{total} samples; CPU by part of the path:", ""]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in by_group.most_common()]
    lines += ["", "self time (the function itself, C calls it makes included):", ""]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive time, frames of sidecar/ only:", ""]
    ours = [(f, n) for f, n in incl.most_common() if "sidecar/" in f]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in ours[:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"## {arg}\n\n{summary(Path(arg))}\n")
