"""structlog setup: JSON lines to stdout, a readable console form on a terminal."""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

from sidecar.config import Logging


def configure(settings: Logging) -> None:
    level = logging.getLevelName(settings.level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line, its newline included: workers share stdout, and
        # with it unbuffered (PYTHONUNBUFFERED, as in most images) print()'s
        # two writes let another process's line land between them.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # aiohttp and asyncio report through the standard library; keep their
    # warnings and errors, on stderr, without the per-request access log.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)


def session_hash(key: str | None) -> str | None:
    """A short, stable stand-in for a session key: logs never carry the key itself."""
    if key is None:
        return None
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
