"""Command line: run the sidecar, check a config, run the bundled examples.

``sse-sidecar [--config FILE]`` runs (FILE defaults to $SSE_SIDECAR_CONFIG);
``sse-sidecar --check-config FILE`` validates FILE with env overrides and exits;
``sse-sidecar doctor URL`` checks the chain in front of the sidecar;
``sse-sidecar example-producer ...`` and ``example-gateway ...`` run the examples.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable

from sidecar import __version__, serve
from sidecar.config import Config, load
from sidecar.errors import ConfigError, ListenError
from sidecar.serve import tune_gc

__all__ = ["main", "run", "tune_gc"]

DEFAULT_CONFIG = "config/sidecar.yaml"


def _example_producer(argv: list[str]) -> int:
    from sidecar.examples import producer

    return producer.main(argv)


def _example_gateway(argv: list[str]) -> int:
    from sidecar.examples import gateway

    return gateway.main(argv)


def _doctor(argv: list[str]) -> int:
    from sidecar import doctor

    return doctor.main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "doctor": _doctor,
    "example-producer": _example_producer,
    "example-gateway": _example_gateway,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(
        prog="sse-sidecar",
        description="A reverse proxy that makes Server-Sent Events streams reliable.",
        epilog="subcommands: " + ", ".join(SUBCOMMANDS),
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("SSE_SIDECAR_CONFIG", DEFAULT_CONFIG),
        help="YAML config file (default: $SSE_SIDECAR_CONFIG or %(default)s)",
    )
    parser.add_argument(
        "--check-config", metavar="FILE", help="validate FILE with env overrides, then exit"
    )
    parser.add_argument("--version", action="version", version=f"sse-sidecar {__version__}")
    args = parser.parse_args(argv)
    path = args.check_config or args.config
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"sse-sidecar: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        routes = ", ".join(f"{r.path} -> {r.upstream}" for r in config.routes)
        print(f"{path}: ok ({len(config.routes)} route(s): {routes})")
        _explain_dialects(config)
        return 0
    return run(config)


def _explain_dialects(config: Config) -> None:
    """Which dialect each route speaks, and the warnings about it (stderr)."""
    from yarl import URL

    from sidecar import dialects

    for i, route in enumerate(config.routes):
        print(f"  {route.name}: {dialects.describe(route.dialect)}")
        path = URL(route.upstream).path
        if dialects.suggested(path) is None:
            path = route.path  # an upstream base of / : the client's path is the API's
        for warning in dialects.warnings(
            f"routes[{i}]",
            path,
            route.dialect,
            retry=route.stream.retry is not None,
            open_event=bool(route.stream.open_event),
        ):
            print(f"sse-sidecar: warning: {warning}", file=sys.stderr)


def run(config: Config, *, worker: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; with ``workers > 1``, supervise worker processes."""
    from sidecar import logs

    logs.configure(config.logging)
    try:
        if config.workers > 1 and not worker:
            from sidecar.workers import Supervisor

            return asyncio.run(Supervisor(config).run())
        return serve.run(config, worker)
    except ListenError as exc:
        print(f"sse-sidecar: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m sidecar.cli, as python -m sidecar
    raise SystemExit(main())
