"""Which credentials a session's stream belongs to: a fingerprint of the starting request.

The session key alone is no secret (keys are often conversation or user ids):
it must not let one user cut off another's stream by replacing it, nor, on
resume routes, read it (a reconnect is served from the replay log without
asking the upstream, so the upstream's authentication never sees it). So a
session claim and a resumable run keep a fingerprint of the credentials of
the request that started them (``session.bind``; by default its
``Authorization`` and ``Cookie`` headers), and a replace, a reconnect or a
stop must present the same ones. The fingerprint is a SHA-256 over the route,
the session key and the configured values, so no claim or log stores a
credential, and equal credentials on another route or session give another
fingerprint. Pure: plain mappings in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

#: Marks a source the request did not carry, apart from one carried empty.
_ABSENT = b"\x01"


class CredentialedRequest(Protocol):
    """Where a request's credentials are (an aiohttp request has them)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def cookies(self) -> Mapping[str, str]: ...


_UNREAD: Mapping[str, str] = MappingProxyType({})


class CredentialBinding:
    """The fingerprint of a request's credentials, as ``session.bind`` lists them."""

    __slots__ = ("_sources",)

    def __init__(self, sources: Sequence[str]) -> None:
        parsed: list[tuple[str, str]] = []
        for source in sources:
            place, _, name = source.partition(":")
            # Header names are case-insensitive (RFC 9110 §5.1); cookie names are not.
            parsed.append((place, name.lower() if place == "header" else name))
        self._sources = tuple(parsed)

    @property
    def enabled(self) -> bool:
        return bool(self._sources)

    def of_request(self, route: str, key: str, request: CredentialedRequest) -> str:
        """:meth:`fingerprint` of a request, parsing its cookies only if a source is one.

        A request caches its parsed cookie jar for as long as it lives, which
        for a stream is the stream's whole life.
        """
        cookies = any(place == "cookie" for place, _ in self._sources)
        return self.fingerprint(
            route, key, request.headers, request.cookies if cookies else _UNREAD
        )

    def fingerprint(
        self,
        route: str,
        key: str,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
    ) -> str:
        """A hex digest of the configured credentials; the same for every request when none are."""
        if not self._sources:
            return ""
        digest = hashlib.sha256(b"sse-sidecar resume binding v1\0")
        for part in (route, key):
            digest.update(part.encode() + b"\0")
        for place, name in self._sources:
            value = headers.get(name) if place == "header" else cookies.get(name)
            digest.update(f"{place}:{name}\0".encode())
            # surrogatepass: a decoded header may hold any code point; never an error here.
            digest.update(_ABSENT if value is None else value.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        return digest.hexdigest()


def same_credentials(stored: str, presented: str) -> bool:
    """Whether a request may act on a run bound to ``stored`` (constant time)."""
    return hmac.compare_digest(stored.encode(), presented.encode())
