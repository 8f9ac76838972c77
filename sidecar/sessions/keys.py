"""Where a route reads its session key from, and what a valid key looks like."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from yarl import URL

from sidecar.config import Session
from sidecar.errors import BadSessionKey
from sidecar.query import query_param

#: What a place the key is not read from is read as.
_UNREAD: Mapping[str, str] = MappingProxyType({})


class KeyedRequest(Protocol):
    """The parts of a request a key may be in (an aiohttp request has them)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def cookies(self) -> Mapping[str, str]: ...

    @property
    def rel_url(self) -> URL: ...

    @property
    def match_info(self) -> Mapping[str, str]: ...


class SessionKeySource:
    """Reads and validates the session key of a request (pure: plain mappings in)."""

    __slots__ = ("_name", "_pattern", "_place", "required")

    def __init__(self, session: Session) -> None:
        place, _, name = session.from_.partition(":")
        self._place = place
        self._name = name
        self._pattern = re.compile(session.pattern)
        self.required = session.required

    @property
    def description(self) -> str:
        if self._place == "path":
            return f"path segment {self._name} after the route prefix"
        return f"{self._place} {self._name}"

    def of_request(self, request: KeyedRequest) -> str | None:
        """:meth:`read` of a request, parsing only the part the key is in.

        A request caches its parsed query and cookie jar for as long as it
        lives, which for a stream is the stream's whole life: the cookies are
        parsed only for a cookie key, and a query key is read from the raw
        query string (sidecar/query.py), never through ``request.query``.
        """
        place = self._place
        query: Mapping[str, str] = _UNREAD
        if place == "query":
            value = query_param(request.rel_url.raw_query_string, self._name)
            query = {self._name: value} if value is not None else _UNREAD
        return self.read(
            request.headers,
            request.cookies if place == "cookie" else _UNREAD,
            query,
            request.match_info["tail"] if place == "path" else "",
        )

    def read(
        self,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        query: Mapping[str, str],
        tail: str,
    ) -> str | None:
        """The key, None when absent and not required; BadSessionKey otherwise."""
        if self._place == "header":
            key = headers.get(self._name)
        elif self._place == "cookie":
            key = cookies.get(self._name)
        elif self._place == "query":
            key = query.get(self._name)
        else:
            segments = [s for s in tail.split("/") if s]
            index = int(self._name)
            key = segments[index] if index < len(segments) else None
        if key is None or key == "":
            if self.required:
                raise BadSessionKey(f"a session key is required ({self.description})")
            return None
        # fullmatch: a pattern without anchors must still cover the whole key,
        # and "$" would otherwise accept a trailing newline.
        if not self._pattern.fullmatch(key):
            raise BadSessionKey(
                f"invalid session key in {self.description}: it must match {self._pattern.pattern}"
            )
        return key
