"""Reading the probe stream through the front chain: the doctor's only I/O."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from sidecar.doctor.model import PROBE_PATH, DoctorError, End, Http2, Observation, Tick
from sidecar.errors import ProtocolError
from sidecar.sse import Comment, Decoder, Event

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
    #: A CA bundle for a front with a private CA; or no certificate check at all.
    cacert: str | None = None
    insecure: bool = False

    @property
    def test_length(self) -> float:
        return (self.events - 1) * self.interval + self.max_silence

    @property
    def total_timeout(self) -> float:
        return self.timeout or self.test_length + 15.0

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            return ssl.create_default_context(cafile=self.cacert)
        except (OSError, ssl.SSLError) as exc:
            raise DoctorError(f"cannot read --cacert {self.cacert}: {exc}") from None


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
        self.comment = False
        self.info_at: float | None = None

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
            elif isinstance(item, Comment):
                self.comment = True

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
            self.info_at = now
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
    wall = [time.time()]

    async def headers_sent(*_: object) -> None:
        origin.append(loop.time())  # after connect and TLS: time zero of the observation
        wall.append(time.time())

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)

    def now() -> float:
        return loop.time() - origin[-1]

    collector: _Collector | None = None
    end: End = "closed"
    ended_at = head_at = 0.0
    response_headers: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout)
    tls = url.scheme == "https"
    connector = aiohttp.TCPConnector(ssl=opts.ssl_context() if tls else False)
    try:
        async with (
            asyncio.timeout(opts.total_timeout),
            aiohttp.ClientSession(
                auto_decompress=False, timeout=timeout, trace_configs=[trace], connector=connector
            ) as http,
            http.get(url, headers=REQUEST_HEADERS) as resp,
        ):
            head_at = now()
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
    except aiohttp.ClientConnectorCertificateError as exc:
        raise DoctorError(
            f"the certificate of {url.host} is not trusted ({exc.certificate_error}); "
            "for a private CA pass --cacert FILE (or --insecure to skip the check)"
        ) from None
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
        request_wall=wall[-1],
        head_at=head_at,
        info_at=collector.info_at,
        comment_sent=info.get("comment") is True,
        comment_seen=collector.comment,
        tls=tls,
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
        if resp.status == 503 and "probe_busy" in snippet:
            hint = "the sidecar is already running its most probes at once: try again shortly"
        elif resp.status == 503 and "draining" in snippet:
            hint = "the sidecar is shutting down: try again once it is back"
        raise DoctorError(f"{url} answered {resp.status} {resp.reason}{detail}; {hint}")
    if resp.content_type != "text/event-stream":
        raise DoctorError(f"{url} answered {resp.content_type}, not text/event-stream; {hint}")


# --- HTTP/2: does the front offer it? ---------------------------------------------------------

#: An empty SETTINGS payload, base64url: all the h2c upgrade needs.
_H2C_UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    "Upgrade: h2c\r\nHTTP2-Settings: \r\nAccept: text/event-stream\r\n\r\n"
)


async def http2_offered(url: URL, opts: Options) -> Http2:
    """ALPN's answer over TLS, the h2c upgrade's on plain http; None when the check failed."""
    host, port = url.raw_host or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(opts.connect_timeout):
            if url.scheme == "https":
                context = opts.ssl_context()
                context.set_alpn_protocols(["h2", "http/1.1"])
                _, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host
                )
                chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
                await _close(writer)
                return "h2" if chosen == "h2" else "http/1.1"
            reader, writer = await asyncio.open_connection(host, port)
            # A probe that ends at once: nothing is held, and the answer is all we read.
            path = url.update_query(events=0, silence=0).raw_path_qs
            writer.write(_H2C_UPGRADE.format(path=path, host=url.raw_authority).encode())
            status = await reader.readline()
            await _close(writer)
            return "h2c" if status.split(b" ")[1:2] == [b"101"] else "http/1.1"
    except (OSError, TimeoutError, ssl.SSLError, DoctorError):
        return None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
