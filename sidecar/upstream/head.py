"""An HTTP upstream's response head as httptools reports it, within its limits.

Pure bookkeeping for :class:`sidecar.upstream.http.Upstream`: the status
line, the headers and any 1xx before them, each bound checked as it comes
(bytes, count, control characters, 1xx count), so a hostile upstream's head
costs bounded memory and gets a defined error. A bound crossed inside a
parser callback raises :class:`UpstreamBadHead`, which ends httptools'
``feed_data``; the error is kept in :attr:`HeadReader.bad` for the protocol
to report.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.errors import (
    UpstreamBadHead,
    UpstreamHeadTooLarge,
    UpstreamInterimFlood,
    UpstreamTooManyHeaders,
)


@dataclass(frozen=True)
class HeadLimits:
    """Bounds on the response head (route ``limits.max_upstream_*``)."""

    #: Status lines and headers of the response and of every 1xx before it.
    max_bytes: int = 32 * 1024
    max_headers: int = 100
    max_interim: int = 8


#: Control characters no reason phrase or header value may carry (tab is allowed).
_CONTROL = frozenset(range(0x20)) - {0x09} | {0x7F}


def too_large(limit: int) -> UpstreamHeadTooLarge:
    return UpstreamHeadTooLarge(f"upstream sent too big header (over {limit} bytes)")


class HeadReader:
    """The head of one response: fed by the parser's callbacks, read once complete."""

    __slots__ = ("_count", "_fed", "_interims", "_parsed", "_raw", "_reason", "bad", "limits")

    def __init__(self, limits: HeadLimits) -> None:
        self.limits = limits
        #: Bytes fed while the head was not complete, and the count of headers and 1xx.
        self._fed = 0
        self._count = 0
        self._interims = 0
        #: Header bytes parsed (a head that came in one read is never counted per read).
        self._parsed = 0
        self._raw: list[tuple[bytes, bytes]] = []
        self._reason = b""
        #: Set by a callback that found the head over a limit (parsing stops).
        self.bad: UpstreamBadHead | None = None

    @property
    def started(self) -> bool:
        """Some of a head came (a close now is a broken head, not a refused connection)."""
        return bool(self._fed or self._reason or self._raw)

    def fed(self, size: int) -> UpstreamBadHead | None:
        """A read while the head is not complete; the error once the head is over its bytes.

        Counted per read, so one endless header line is bounded too (httptools
        holds a header until it is complete).
        """
        self._fed += size
        return too_large(self.limits.max_bytes) if self._fed > self.limits.max_bytes else None

    # --- the parser's callbacks -------------------------------------------------------

    def status(self, part: bytes) -> None:
        self._reason += part

    def header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        self._count += 1
        self._parsed += len(name) + len(value) + 4
        if self._parsed > limits.max_bytes:
            self._stop(too_large(limits.max_bytes))
        if self._count > limits.max_headers:
            self._stop(
                UpstreamTooManyHeaders(
                    f"upstream sent too many headers (over {limits.max_headers})"
                )
            )
        if not _CONTROL.isdisjoint(value):
            self._stop(UpstreamBadHead("upstream sent a control character in a header"))
        self._raw.append((name, value))

    def complete(self, status: int) -> tuple[str, CIMultiDictProxy[str]] | None:
        """The reason and headers of a final answer; None after a 1xx (the answer follows)."""
        if not _CONTROL.isdisjoint(self._reason):
            self._stop(UpstreamBadHead("upstream sent a control character in its reason"))
        if status < 200:
            self._interims += 1
            if self._interims > self.limits.max_interim:
                self._stop(
                    UpstreamInterimFlood(
                        f"upstream sent over {self.limits.max_interim} 1xx responses"
                    )
                )
            self._raw.clear()
            self._reason = b""
            return None
        # aiohttp's server decodes header values the same way, so they round-trip.
        headers = CIMultiDictProxy(
            CIMultiDict(
                (k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in self._raw
            )
        )
        self._raw.clear()
        return self._reason.decode("latin-1"), headers

    def _stop(self, error: UpstreamBadHead) -> None:
        """Stop parsing: raised in a callback, httptools ends feed_data with an error."""
        self.bad = error
        raise error
