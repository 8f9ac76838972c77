"""Where a route reads its session key from, and what a valid key looks like."""

from __future__ import annotations

import re
from collections.abc import Mapping

from sidecar.config import Session
from sidecar.errors import BadSessionKey


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
