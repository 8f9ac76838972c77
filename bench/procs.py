"""Child processes of the benchmark and what /proc says about them (CPU time, RSS).

CPU time is utime+stime plus cutime+cstime (children already reaped) summed
over a process and all its live descendants, so nginx's master and workers
count together. Memory is VmRSS summed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop when it is installed (it is a dev dependency), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port(below: int = 65536) -> int:
    """A loopback port free right now (the caller binds it soon after), below ``below``.

    Never one of the kernel's ephemeral ports: a port that bind(0) returned is in
    that range, so between its release and the caller's bind an outgoing connection
    of any process (a client, a Redis pool) may take it as its local port. Ports
    already handed out by this process are not handed out again.
    """
    low, high = ephemeral_range()
    spans = [(a, b) for a, b in ((10000, min(low, below)), (high + 1, below)) if b - a > 1000]
    for _ in range(1000):
        start, end = random.choice(spans)
        port = random.randrange(start, end)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port outside the ephemeral range")


# --- /proc -----------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks incl. reaped children) of one process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rfind(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, utime + stime + cutime + cstime


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                parents.setdefault(info[0], []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, ()))
    return found


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` holds open."""
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _established_on(port: int, state: str = "01") -> set[int]:
    """Inodes of the TCP sockets on local port ``port`` in ``state`` (01: established)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 01 is ESTABLISHED, 0A LISTEN.
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def listening(pids: list[int], port: int) -> list[int]:
    """Those of ``pids`` that listen on ``port`` (a supervisor's workers, not its helpers)."""
    sockets = _established_on(port, "0A")
    return [pid for pid in pids if _socket_inodes(pid) & sockets]


def connections_by_process(pids: list[int], port: int) -> list[int]:
    """How many client connections to ``port`` each of ``pids`` holds (a worker's streams)."""
    established = _established_on(port)
    return [len(_socket_inodes(pid) & established) for pid in pids]


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat), for what else ran."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Usage:
    """CPU seconds and resident memory of a process tree at one moment."""

    cpu_s: float
    rss_kib: int
    at: float

    @classmethod
    def of(cls, pid: int | None) -> Usage:
        if pid is None:
            return cls(0.0, 0, time.monotonic())
        pids = tree(pid)
        ticks = sum(info[1] for p in pids if (info := _stat(p)) is not None)
        return cls(ticks / CLK_TCK, sum(_rss_kib(p) for p in pids), time.monotonic())


# --- children --------------------------------------------------------------------


class Child:
    """A subprocess whose stdout is read line by line with a timeout; stderr goes to a file."""

    def __init__(self, name: str, argv: list[str], logdir: Path, *, stdin: bool = False) -> None:
        self.name = name
        self.log = logdir / f"{name}.stderr"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.pid = self.proc.pid
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def readline(self, timeout: float) -> str:
        """The next stdout line; raises if none comes in ``timeout`` or the process ends."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                raise TimeoutError(f"{self.name}: no output within {timeout:g}s{self.tail()}")
            data = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not data:
                self.proc.wait(timeout=5)
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}){self.tail()}")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
        except FileNotFoundError:
            return ""
        return ("\n  " + "\n  ".join(text)) if text else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal, wait, kill if it does not end; close the pipes (no ResourceWarning)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._sel.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wait_port(port: int, timeout: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited{child.tail()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def wait_http(url: str, timeout: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited{child.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:g}s")
        time.sleep(0.05)
