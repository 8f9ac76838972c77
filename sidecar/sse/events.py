"""The items an event stream is made of.

Named tuples rather than dataclasses: one is built per upstream event on the
hot path, and tuple construction is the cheapest immutable record Python has.
"""

from __future__ import annotations

from typing import NamedTuple

#: The largest ``retry`` (ms, about 11.6 days) either side of the codec
#: handles; larger values are clamped to it.
MAX_RETRY_MS = 10**9


class Event(NamedTuple):
    """One event block, as the WHATWG parser collects it between blank lines.

    ``data`` is None when the block had no ``data`` line (a browser does not
    dispatch such a block, but its ``id`` and ``retry`` still take effect, so a
    proxy must pass it on). ``event`` None means the default type ``message``;
    ``id`` None means the block had no (valid) ``id`` field, ``""`` resets the
    last event id.
    """

    data: str | None
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class Comment(NamedTuple):
    """A comment line (``: text``), surfaced so the normaliser can convert it."""

    text: str


Item = Event | Comment
