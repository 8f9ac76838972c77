"""``workers: N``: N processes serve one port, a supervisor serves the admin port.

Strategy: the supervisor (the process the user started) spawns N worker
processes; each binds the stream port with SO_REUSEPORT, so the kernel
spreads connections over them. Sessions hold across workers through the
Redis backend (config validation insists on it). Metrics use
prometheus-client's multiprocess mode: every worker writes its samples to a
directory the supervisor owns, and the supervisor's ``/metrics`` adds them
up. ``/readyz`` is true once every worker listens (each sets an event of
its own when it does): a probe that passed while a worker was still starting
would send all the first connections to the others, or to none. On SIGTERM
the supervisor turns ``/readyz`` false, passes SIGTERM on, and each worker
drains as a single process would. A worker that dies is started again, and
the supervisor is not ready until it listens.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from sidecar.config import Config
from sidecar.errors import ListenError
from sidecar.metrics import admin_app
from sidecar.server import start_site

log = structlog.get_logger("sse_sidecar")

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RESTART_DELAY = 1.0


def _worker_main(config: Config, index: int, listening: Event) -> None:
    """Entry point of one worker process (spawned: nothing inherited but its arguments)."""
    from sidecar import logs, serve

    # The supervisor decides when to stop: SIGINT from a terminal reaches
    # the whole process group, SIGTERM is forwarded by the supervisor.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    structlog.contextvars.bind_contextvars(worker=index)
    logs.configure(config.logging)
    try:
        code = serve.run(config, worker=True, on_listening=listening.set)
    except ListenError as exc:
        # The supervisor logs the exit and starts it again (the port may come free).
        log.error("worker_cannot_listen", worker=index, error=str(exc))
        code = 1
    raise SystemExit(code)


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics_dir = tempfile.mkdtemp(prefix="sse-sidecar-metrics-")
        self.procs: list[BaseProcess] = []
        #: Set by each worker (by index) once it listens.
        self.listening: list[Event] = []
        self.draining = False
        self._spawn = multiprocessing.get_context("spawn")
        self.admin_port = config.admin.port

    def _start_worker(self, index: int) -> BaseProcess:
        listening = self._spawn.Event()
        if index < len(self.listening):
            self.listening[index] = listening
        else:
            self.listening.append(listening)
        proc = self._spawn.Process(
            target=_worker_main,
            args=(self.config, index, listening),
            name=f"sse-sidecar-worker-{index}",
        )
        proc.start()
        log.info("worker_started", worker=index, pid=proc.pid)
        return proc

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        dead = [i for i, p in enumerate(self.procs) if not p.is_alive()]
        if dead:
            return False, f"workers not running: {dead}"
        starting = [i for i, event in enumerate(self.listening) if not event.is_set()]
        if starting:
            return False, f"workers starting: {starting}"
        return True, "ready"

    def render_metrics(self) -> bytes:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def run(self) -> int:
        # Set before any worker starts: prometheus-client picks its value
        # class from this variable when a process first imports it.
        os.environ[_MULTIPROC_ENV] = self.metrics_dir
        try:
            # The admin port first: if it cannot be had, no worker is left behind.
            runner = await self._start_admin()
            self.procs = [self._start_worker(i) for i in range(self.config.workers)]
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            while not stop.is_set():
                self._restart_dead()
                try:
                    async with asyncio.timeout(_RESTART_DELAY):
                        await stop.wait()
                except TimeoutError:
                    pass
            await self._drain()
            await runner.cleanup()
            return 0
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _restart_dead(self) -> None:
        for i, proc in enumerate(self.procs):
            if not proc.is_alive():
                log.warning("worker_died", worker=i, pid=proc.pid, exitcode=proc.exitcode)
                if proc.pid is not None:
                    mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                self.procs[i] = self._start_worker(i)

    async def _drain(self) -> None:
        self.draining = True
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        # Each worker drains for drain_timeout, then ends its streams.
        deadline = self.config.drain_timeout + 5.0
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, proc.join, deadline) for proc in self.procs)
        )
        for proc in self.procs:
            if proc.is_alive():
                log.warning("worker_killed", pid=proc.pid)
                proc.kill()
                proc.join(1.0)

    async def _start_admin(self) -> web.AppRunner:
        app = admin_app(self.render_metrics, self.ready, self.config.admin.token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.admin.host, self.config.admin.port)
        await start_site(site, "admin")
        return runner
