"""Picking up a broken upstream stream where it stopped: the request kept, the cursor, the form.

Strategy: pure (no I/O, no clock). A run that may resume keeps its upstream
request (:class:`KeptRequest`) and a :class:`ResumeCursor` that every
forwarded event updates: the last upstream id and the data fields the
route's resume form names. When the connection breaks,
:func:`resume_request` turns the kept request and the cursor into the
request that asks the producer for the rest (``Last-Event-ID``, or a query,
method and path built from the cursor, as OpenAI's background responses
want), and the cursor drops what the producer repeats at the start of the
new connection (:func:`repeats`). Both travel as bytes (JSON), so another
replica can take a run over. sidecar/stream/resumer.py does the I/O.

Placeholders: ``{id}`` is the last upstream event id; ``{data.PATH}`` is the
dotted ``PATH`` in the JSON ``data`` of the latest event that had it (the
fields of earlier events are remembered: OpenAI names the response only in
its first events).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from yarl import URL

from sidecar.errors import InvalidResumeState, SidecarError, UpstreamDisconnected, UpstreamTimeout
from sidecar.sse import Event, Item
from sidecar.upstream.resume_config import PLACEHOLDER, UpstreamResume, placeholders
from sidecar.upstream.ws_profile import lookup

__all__ = [
    "KeptRequest",
    "ResumeCursor",
    "UpstreamResume",
    "backoff_delay",
    "id_position",
    "may_resume",
    "repeats",
    "resume_request",
]

# --- the kept request ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptRequest:
    """The upstream request of a run, as sent: kept for the run's life to ask again."""

    method: str
    #: Encoded, as it went upstream (byte for byte).
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None = None

    def to_bytes(self) -> bytes:
        body = None if self.body is None else base64.b64encode(self.body).decode("ascii")
        doc = {"method": self.method, "url": self.url, "headers": self.headers, "body": body}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeptRequest:
        doc = _document(data, "kept request")
        method, url, headers, body = (doc.get(k) for k in ("method", "url", "headers", "body"))
        if not (isinstance(method, str) and isinstance(url, str) and isinstance(headers, list)):
            raise InvalidResumeState("kept request: method, url or headers missing")
        pairs: list[tuple[str, str]] = []
        for pair in headers:
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            ):
                raise InvalidResumeState("kept request: a header is not a [name, value] pair")
            pairs.append((pair[0], pair[1]))
        if body is not None and not isinstance(body, str):
            raise InvalidResumeState("kept request: body is not base64 text")
        try:
            raw = None if body is None else base64.b64decode(body, validate=True)
        except binascii.Error:
            raise InvalidResumeState("kept request: body is not base64 text") from None
        return cls(method, url, tuple(pairs), raw)


# --- the cursor ------------------------------------------------------------------------

#: A position: the text before the number, and the number (ids compare within one prefix).
Position = tuple[str, int]

_TRAILING_NUMBER = re.compile(r"(.*?)(\d+)\Z", re.DOTALL)


def id_position(event_id: str) -> Position | None:
    """The order of an id: the number it ends with (``42``, ``run-42``), else None."""
    match = _TRAILING_NUMBER.match(event_id)
    if match is None or len(match[2]) > 30:
        return None
    return match[1], int(match[2])


class ResumeCursor:
    """Where the forwarded stream stands: the last upstream id, and the fields the form needs.

    ``wants`` are the ``data.PATH`` names to remember, ``order`` what orders
    events (``id`` or a ``data.PATH``). After :meth:`resuming`, the first
    events of the new connection that :func:`repeats` finds are dropped by
    :meth:`take`, up to the first new one.
    """

    __slots__ = ("catching_up", "dropped", "fields", "last_id", "order", "position", "wants")

    def __init__(
        self,
        wants: Iterable[str] = (),
        order: str = "id",
        *,
        last_id: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        self.order = order
        #: The data paths to remember (``data.`` cut off), the order's among them.
        self.wants = tuple(sorted({_data_path(w) for w in (*wants, order) if w != "id"}))
        self.last_id = last_id
        self.fields: dict[str, str] = dict(fields or {})
        self.position = self._position()
        #: Set on a resume: repeats at the start of the new connection are dropped.
        self.catching_up = False
        #: Events dropped as repeats, over the run.
        self.dropped = 0

    @classmethod
    def for_config(cls, config: UpstreamResume) -> ResumeCursor:
        return cls(placeholders(config), config.order)

    def observe(self, event: Event) -> None:
        """An event went to the client: remember its id and the fields the form names."""
        if event.id is not None:
            # An empty id resets the last event id (WHATWG 9.2.6): nothing to resume from.
            self.last_id = event.id or None
        if self.wants and event.data:
            self.fields.update(_fields_of(event.data, self.wants))
        self.position = self._position()

    def position_of(self, event: Event) -> Position | None:
        """Where ``event`` stands in the order, if it says."""
        if self.order == "id":
            return id_position(event.id) if event.id else None
        path = _data_path(self.order)
        value = _fields_of(event.data, (path,)).get(path) if event.data else None
        return None if value is None else id_position(value)

    def resuming(self) -> None:
        """A resume request goes out: what the producer repeats is dropped until a new event."""
        self.catching_up = True

    def take(self, items: list[Item]) -> list[Item]:
        """The items to forward, observed; while catching up, without the repeats."""
        if not self.catching_up:
            for item in items:
                if type(item) is Event:
                    self.observe(item)
            return items
        kept: list[Item] = []
        for item in items:
            if type(item) is Event:
                if self.catching_up and repeats(self, item):
                    self.dropped += 1
                    continue
                if self.position_of(item) is not None:
                    self.catching_up = False  # the first new event: the rest is new too
                self.observe(item)
            kept.append(item)
        return kept

    def value(self, name: str) -> str | None:
        """A placeholder's value (``id`` or ``data.PATH``), None while unknown."""
        if name == "id":
            return self.last_id
        return self.fields.get(_data_path(name))

    def to_bytes(self) -> bytes:
        doc = {"last_id": self.last_id, "fields": self.fields, "wants": self.wants,
               "order": self.order}  # fmt: skip
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ResumeCursor:
        doc = _document(data, "resume cursor")
        last_id, fields, wants, order = (
            doc.get(k) for k in ("last_id", "fields", "wants", "order")
        )
        if not (last_id is None or isinstance(last_id, str)) or not isinstance(order, str):
            raise InvalidResumeState("resume cursor: last_id or order of the wrong type")
        if not (isinstance(fields, dict) and all(isinstance(v, str) for v in fields.values())):
            raise InvalidResumeState("resume cursor: fields must map names to text")
        if not (isinstance(wants, list) and all(isinstance(w, str) for w in wants)):
            raise InvalidResumeState("resume cursor: wants must be a list of paths")
        if order != "id" and not order.startswith("data."):
            raise InvalidResumeState(f"resume cursor: unknown order {order!r}")
        return cls((f"data.{w}" for w in wants), order, last_id=last_id, fields=fields)

    def _position(self) -> Position | None:
        value = self.last_id if self.order == "id" else self.fields.get(_data_path(self.order))
        return None if value is None else id_position(value)

    def __repr__(self) -> str:
        return f"ResumeCursor(last_id={self.last_id!r}, fields={self.fields!r})"


def repeats(cursor: ResumeCursor, event: Event) -> bool:
    """Whether ``event`` is one the client already has: at or before the cursor.

    The last id itself is always a repeat; otherwise positions compare when
    both are known and share their prefix (``run-7`` is before ``run-12``,
    and says nothing about ``other-3``). An event whose position cannot be
    read is not taken for a repeat.
    """
    if cursor.last_id is not None and event.id == cursor.last_id:
        return True
    mine = cursor.position
    theirs = cursor.position_of(event)
    if mine is None or theirs is None or mine[0] != theirs[0]:
        return False
    return theirs[1] <= mine[1]


def _data_path(name: str) -> str:
    """``data.PATH`` without ``data.``: the path in an event's JSON data."""
    return name.removeprefix("data.")


def _fields_of(data: str, paths: Iterable[str]) -> dict[str, str]:
    """The text of each path found in JSON ``data`` (numbers and strings; nothing else)."""
    if not data.startswith("{"):
        return {}  # not a JSON object: no parse
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    found: dict[str, str] = {}
    for path in paths:
        value = lookup(doc, path)
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            found[path] = str(value)
    return found


# --- the resume request -----------------------------------------------------------------


def resume_request(
    kept: KeptRequest, config: UpstreamResume, cursor: ResumeCursor
) -> KeptRequest | None:
    """The request that asks the producer for what follows ``cursor``.

    None when the cursor lacks a value the form needs (no id yet, a field
    never seen), or a path value would climb (``.``, ``..``, empty): then
    there is nothing to resume from.
    """
    values: dict[str, str] = {}
    for name in placeholders(config):
        value = cursor.value(name)
        if value is None:
            return None
        values[name] = value
    url = URL(kept.url, encoded=True)
    if config.path is not None:
        if any(v in ("", ".", "..") for k, v in values.items() if f"{{{k}}}" in config.path):
            return None
        path = _render(config.path, values, lambda v: quote(v, safe=""))
        url = url.with_path(path, encoded=True).with_query(None)
    if config.query:
        url = _with_query(url, {k: _render(t, values, str) for k, t in config.query.items()})
    drop = {config.header.lower()} if config.header else set()
    body = kept.body if config.body == "keep" else None
    if body is None and config.body == "drop":
        drop.add("content-type")
    headers = tuple((k, v) for k, v in kept.headers if k.lower() not in drop)
    if config.header:
        headers += ((config.header, values["id"]),)
    return KeptRequest(config.method or kept.method, str(url), headers, body)


def _render(template: str, values: dict[str, str], escape: Any) -> str:
    return PLACEHOLDER.sub(lambda m: str(escape(values[m[1]])), template)


def _with_query(url: URL, params: dict[str, str]) -> URL:
    """``url`` with ``params`` set: the other parameters stay as they were sent."""
    names = {quote(k, safe="") for k in params}
    kept = [p for p in url.raw_query_string.split("&") if p and p.partition("=")[0] not in names]
    added = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items()]
    base = str(url.with_query(None).with_fragment(None))
    return URL(f"{base}?{'&'.join(kept + added)}", encoded=True)


def backoff_delay(config: UpstreamResume, attempt: int, jitter: float) -> float:
    """The wait before resume attempt ``attempt`` (1-based); ``jitter`` in [0, 1]."""
    base = min(config.backoff * 2.0 ** min(attempt - 1, 30), config.max_backoff)
    return base * (0.5 + 0.5 * jitter)


def may_resume(error: SidecarError, total_limit_reached: bool) -> bool:
    """Whether a break is worth a resume: a cut or a silence, not a limit or bad bytes."""
    if total_limit_reached:
        return False
    return isinstance(error, UpstreamDisconnected | UpstreamTimeout)


def _document(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidResumeState(f"{what}: not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidResumeState(f"{what}: not a JSON object")
    return doc
