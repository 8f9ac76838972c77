"""Typed, frozen configuration and its loader.

Strategy: the YAML file is read into plain data, environment overrides are
merged in, and :func:`build` walks the dataclasses below by their type hints,
so every key is checked against one declaration and every error names the
key path and the bad value. Loading has no side effects.

Durations accept ``ms``, ``s``, ``m``, ``h`` (``15s``, ``1h``, ``250ms``) or a
number of seconds; sizes accept ``B``, ``KiB``, ``MiB``, ``GiB``, ``KB``, ``MB``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from yarl import URL

from sidecar.config_env import apply_env
from sidecar.config_session import Session, bind_sources, validate_session
from sidecar.cors import CorsPolicy, validate_cors
from sidecar.dialects import DialectName
from sidecar.errors import ConfigError
from sidecar.typedconf import Duration, EnvValue, Size, build, parse_duration, parse_size
from sidecar.upstream.resume_config import UpstreamResume, validate_upstream_resume
from sidecar.upstream.ws_profile import WebSocketProfile, validate_profile

# The typed loader is part of this module's API (the WS profile uses Duration
# and Size; tests use the parsers), and so is the session block (sidecar/config_session.py).
__all__ = ["Duration", "EnvValue", "Session", "Size", "build", "parse_duration", "parse_size"]

CommentMode = Literal["convert", "pass", "drop"]
BackendKind = Literal["memory", "redis"]
OutagePolicy = Literal["reject", "allow"]
LogFormat = Literal["auto", "json", "console"]


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class Admin:
    host: str = "127.0.0.1"
    port: int = 9090
    #: Bearer token required on every admin path but /healthz; None: open.
    token: str | None = None


@dataclass(frozen=True)
class Backend:
    kind: BackendKind = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every Redis key and channel, so several deployments can share one Redis.
    prefix: str = "sse-sidecar:"
    #: A session owner's lease: a replica that dies frees its sessions after this.
    lease: Duration = 10.0
    #: Connections per process of each Redis pool (sessions, replay logs);
    #: followers of runs elsewhere wait together on one more. A burst of
    #: calls queues for a free connection (within about a second) instead
    #: of opening more, so a process holds at most 2 × pool_size + 1.
    pool_size: int = 6
    #: While Redis is unreachable, new streams on routes with a session key are
    #: refused with 503 (reject) or served without exclusivity (allow).
    on_outage: OutagePolicy = "reject"
    #: ``url`` names one node of a Redis Cluster (as does a ``redis+cluster://`` URL).
    cluster: bool = False


@dataclass(frozen=True)
class Heartbeat:
    #: Write a keepalive after this long without any write; 0 turns heartbeats off.
    #: 3 s: under httpx's default 5 s read timeout (the OpenAI and Anthropic
    #: SDKs' transport), with room for a loaded event loop.
    interval: Duration = 3.0


@dataclass(frozen=True)
class Keepalive:
    """The form of the keepalive event (converted comments and heartbeats)."""

    event: str = "keepalive"
    data: str = '{"type":"keepalive"}'


@dataclass(frozen=True)
class Terminal:
    #: Event types that end a stream (the upstream's own terminal event).
    events: tuple[str, ...] = ("done", "final")
    #: Data payloads that end a stream, compared after stripping whitespace.
    data: tuple[str, ...] = ("[DONE]",)


@dataclass(frozen=True)
class Resume:
    enabled: bool = False
    grace: Duration = 30.0
    buffer_events: int = 1000
    buffer_bytes: Size = 4 * 1024 * 1024
    retention: Duration = 300.0
    #: Query parameter that carries the last event id for fetch() clients
    #: (EventSource sends the Last-Event-ID header by itself).
    query_param: str = "last_event_id"
    #: The old name of ``session.bind`` (sidecar/config_session.py), still read.
    bind: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Limits:
    max_event_bytes: Size = 1024 * 1024
    max_line_bytes: Size = 1024 * 1024
    max_body_bytes: Size = 1024 * 1024
    #: Largest non-SSE upstream response passed through to the client.
    max_passthrough_bytes: Size = 1024 * 1024
    connect_timeout: Duration = 10.0
    #: No byte at all from the upstream for this long ends the stream.
    idle_timeout: Duration = 300.0
    max_duration: Duration = 3600.0
    #: A client that takes longer than this to accept one write is cut off.
    write_timeout: Duration = 30.0
    #: The upstream's response head (status line, headers, and every 1xx
    #: before it) together; past it: 502 before the stream, else upstream_protocol.
    max_upstream_head_bytes: Size = 32 * 1024
    max_upstream_headers: int = 100
    #: 1xx interim responses before the real one.
    max_upstream_interim: int = 8
    #: Bytes held for a client that is behind (the upstream is paused meanwhile).
    max_pending_bytes: Size = 1024 * 1024


@dataclass(frozen=True)
class Stream:
    """What the sidecar writes of its own at the start of every stream."""

    #: ``retry:`` sent first (written in milliseconds), so browsers reconnect at this pace.
    retry: Duration | None = None
    #: An opening event written as soon as the headers are out (null: none).
    open_event: str | None = None
    #: How long to wait for the upstream's status line before committing to a
    #: 200 stream. Within it an error status is passed through as it is; after
    #: it, headers are out and a late error status becomes error/upstream_status.
    commit_after: Duration = 1.0


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    upstream: str
    methods: tuple[str, ...] = ("GET", "POST")
    comments: CommentMode = "convert"
    #: The client family whose forms the sidecar's own writes take:
    #: generic | openai | anthropic (sidecar/dialects.py).
    dialect: DialectName = "generic"
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    keepalive: Keepalive = field(default_factory=Keepalive)
    terminal: Terminal = field(default_factory=Terminal)
    session: Session = field(default_factory=Session)
    resume: Resume = field(default_factory=Resume)
    #: Re-request a broken upstream after its last event id (sidecar/upstream/resumption.py).
    upstream_resume: UpstreamResume = field(default_factory=UpstreamResume)
    limits: Limits = field(default_factory=Limits)
    stream: Stream = field(default_factory=Stream)
    #: For ws:// and wss:// upstreams: the gateway's protocol (default: the
    #: agent-gateway profile, see sidecar/upstream/ws_profile.py).
    websocket: WebSocketProfile | None = None
    #: Cross-origin browsers (sidecar/cors.py); None: the upstream's own CORS
    #: headers pass through, and cookie-keyed sessions refuse other origins.
    cors: CorsPolicy | None = None

    @property
    def is_websocket(self) -> bool:
        return self.upstream.startswith(("ws://", "wss://"))

    @property
    def bind(self) -> tuple[str, ...]:
        """The credentials the route's sessions are bound to (``session.bind``)."""
        return bind_sources(self.session, self.resume.bind)


@dataclass(frozen=True)
class ServerLimits:
    """The stream port's connections and request heads (sidecar/server.py)."""

    #: A connection must deliver a complete request head within this long
    #: (from its first byte, or from the connection for the first request).
    request_head_timeout: Duration = 10.0
    #: Request line and headers together; past it: 431.
    max_request_head_bytes: Size = 32 * 1024
    max_request_headers: int = 100
    #: Client connections open at once; the next gets 503. Lowered at start to
    #: what the open-file limit allows (each stream also holds an upstream socket).
    max_connections: int = 10000
    #: Malformed requests logged per second at most (the rest are counted).
    bad_request_logs_per_s: int = 5


@dataclass(frozen=True)
class Logging:
    level: str = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True)
class Config:
    routes: tuple[Route, ...]
    listen: Listen = field(default_factory=Listen)
    admin: Admin = field(default_factory=Admin)
    workers: int = 1
    backend: Backend = field(default_factory=Backend)
    logging: Logging = field(default_factory=Logging)
    #: Streams open at once across all routes; the next one gets a 503.
    max_streams: int = 20000
    #: On SIGTERM, how long running streams may go on before error/shutdown.
    drain_timeout: Duration = 10.0
    #: The ``retry:`` sent with error/shutdown (written in milliseconds).
    shutdown_retry: Duration = 1.0
    #: All resume buffers of the process together; past it the oldest go.
    replay_max_bytes: Size = 256 * 1024 * 1024
    #: Where ``sse-sidecar doctor`` finds the diagnostic stream on the stream
    #: port (null: no probe). It sends a few events, then stays silent to
    #: measure what the chain in front tolerates.
    probe_path: str | None = "/_sse-sidecar/probe"
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: Peers (CIDRs, e.g. the nginx in front) whose X-Forwarded-*/Forwarded
    #: headers are kept; everyone else's are replaced from the connection.
    trusted_proxies: tuple[str, ...] = ()


# --- whole-config checks -----------------------------------------------------------


def validate(config: Config) -> Config:
    """Checks that span several keys; raises ConfigError naming the key."""
    if not config.routes:
        raise ConfigError("routes: at least one route is required")
    names: set[str] = set()
    paths: set[str] = set()
    for i, route in enumerate(config.routes):
        key = f"routes[{i}]"
        if route.name in names:
            raise ConfigError(f"{key}.name: duplicate route name {route.name!r}")
        names.add(route.name)
        if not route.path.startswith("/") or route.path.rstrip("/") in paths:
            raise ConfigError(f"{key}.path: must start with / and be unique, got {route.path!r}")
        paths.add(route.path.rstrip("/"))
        _validate_route(route, key)
    if config.probe_path is not None and (
        not config.probe_path.startswith("/") or config.probe_path.rstrip("/") in paths
    ):
        raise ConfigError(
            f"probe_path: must start with / and differ from every route path, "
            f"got {config.probe_path!r}"
        )
    for name in ("listen", "admin"):
        port = getattr(config, name).port
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name}.port: must be 0..65535, got {port}")
    if config.workers < 1:
        raise ConfigError(f"workers: must be at least 1, got {config.workers}")
    if config.workers > 1 and config.backend.kind != "redis":
        raise ConfigError(
            f"workers: {config.workers} processes need backend.kind: redis, so that one "
            "session has one stream across them (the memory backend sees one process only)"
        )
    if config.backend.pool_size < 2:
        raise ConfigError(
            f"backend.pool_size: must be at least 2 (the replace channel holds one), "
            f"got {config.backend.pool_size}"
        )
    if config.backend.lease < 1.0:
        raise ConfigError(f"backend.lease: must be at least 1s, got {config.backend.lease:g}s")
    if config.max_streams < 1:
        raise ConfigError(f"max_streams: must be at least 1, got {config.max_streams}")
    for i, cidr in enumerate(config.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"trusted_proxies[{i}]: not a CIDR or address: {cidr!r}") from None
    server = config.limits
    for name in ("request_head_timeout", "max_request_head_bytes", "max_request_headers",
                 "max_connections"):  # fmt: skip
        if not getattr(server, name) > 0:
            raise ConfigError(f"limits.{name}: must be greater than 0")
    return config


def _validate_route(route: Route, key: str) -> None:
    try:
        url = URL(route.upstream)
        url.port  # noqa: B018 - parsing the port is what may fail
    except ValueError as exc:
        raise ConfigError(f"{key}.upstream: not a valid URL {route.upstream!r}: {exc}") from None
    if url.scheme not in ("http", "https", "ws", "wss") or not url.host:
        raise ConfigError(
            f"{key}.upstream: must be an absolute http(s):// or ws(s):// URL, "
            f"got {route.upstream!r}"
        )
    if route.websocket is not None:
        if not route.is_websocket:
            raise ConfigError(f"{key}.websocket: only for ws:// or wss:// upstreams")
        validate_profile(route.websocket, f"{key}.websocket")
    if url.query_string or url.fragment:
        raise ConfigError(f"{key}.upstream: must not carry a query or fragment")
    bad = [m for m in route.methods if m not in ("GET", "POST")]
    if bad:
        raise ConfigError(f"{key}.methods: only GET and POST are streamed, got {bad[0]!r}")
    validate_session(route.session, route.resume.bind, key)
    limits = route.limits
    for name in (
        "max_event_bytes",
        "max_line_bytes",
        "idle_timeout",
        "max_duration",
        "connect_timeout",
        "write_timeout",
    ):
        if not getattr(limits, name) > 0:
            raise ConfigError(f"{key}.limits.{name}: must be greater than 0")
    for name in ("max_upstream_head_bytes", "max_upstream_headers", "max_pending_bytes"):
        if not getattr(limits, name) > 0:
            raise ConfigError(f"{key}.limits.{name}: must be greater than 0")
    if route.cors is not None:
        validate_cors(route.cors, f"{key}.cors")
    validate_upstream_resume(
        route.upstream_resume, f"{key}.upstream_resume", websocket=route.is_websocket
    )
    if route.resume.enabled and route.resume.buffer_events < 1:
        raise ConfigError(f"{key}.resume.buffer_events: must be at least 1 when resume is on")
    if route.resume.enabled and route.resume.buffer_bytes < limits.max_event_bytes:
        raise ConfigError(
            f"{key}.resume.buffer_bytes: must hold at least one event "
            f"(limits.max_event_bytes = {limits.max_event_bytes}), got {route.resume.buffer_bytes}"
        )


# --- entry points ----------------------------------------------------------------


def from_mapping(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {data!r}")
    if environ is not None:
        data = apply_env(data, environ, {f.name for f in dataclasses.fields(Config)})
    config: Config = build(Config, data)
    return validate(config)


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from ``environ`` (default: none) and validate one YAML file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return from_mapping(data, os.environ if environ is None else environ)
