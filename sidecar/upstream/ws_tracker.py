"""Sans-I/O core of the WebSocket upstream: a gateway's frames in, our run's SSE events out.

Strategy (h11's shape): :class:`RunTracker` takes each message or decoded JSON
frame and returns the :class:`~sidecar.sse.Event` items it yields; a run ends
with the terminal event or one of our errors. No socket, no clock, no asyncio:
:mod:`sidecar.upstream.websocket` does the I/O.

Which frames are ours: a gateway broadcasts every run's
events to every connection, so a frame counts only if its session key is the
one our request sent and its run id is the latched one. The run id is
latched from the accepted response to our request id; events that arrive
before that response are held (bounded) and replayed once it is in. When the
profile names no run id in responses (``response.run_id: ""``), or the
acceptance carries none, the first event that passes the session filter
latches it.

Cumulative text to deltas, and the reset rule: the tracker
holds ``text``, exactly what a client has assembled. A new cumulative text
that extends it yields ``event: delta`` with the new suffix. One that does not
(shorter, or different inside) yields ``event: reset`` with the WHOLE new
text, which a client puts in place of what it holds; deltas then continue
from that text. The reset carries every character, so nothing is lost, and a
client replaces rather than appends, so nothing is doubled. The terminal
event carries the full final text too, so a client that ignores resets still
ends right.

Frames that break the profile (not JSON, binary, not an object, a field
missing or of the wrong type, over ``max_frame_bytes``) are counted in
``malformed`` by kind and skipped: a defined outcome, never an exception.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Mapping
from typing import Final, Literal

from sidecar.errors import UpstreamAborted, UpstreamDisconnected, UpstreamRunFailed
from sidecar.sse import Event
from sidecar.upstream.ws_profile import MISSING, Missing, WebSocketProfile, lookup

#: Bounded labels for frames that are not what the profile describes.
Malformed = Literal["not_json", "binary", "not_object", "missing_field", "too_large"]

#: Events held while the acceptance (and with it our run id) is not in yet.
PENDING_EVENTS: Final = 256
#: Longest gateway error message passed on to the client.
MAX_MESSAGE_CHARS: Final = 1000


def _strict_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN and Infinity


class RunTracker:
    """Turns the frames a gateway sends into the SSE events of our run.

    ``request_id`` and ``session_key`` are the values our request frame sent
    (see :meth:`for_request`); ``MISSING`` or ``None`` as ``session_key``
    turns the session filter off. After the terminal event, or once an error
    was raised, ``done`` is true and further frames are ignored.
    """

    def __init__(
        self,
        profile: WebSocketProfile,
        *,
        request_id: object,
        session_key: object = MISSING,
        terminal_event: str = "done",
    ) -> None:
        self.profile = profile
        self.request_id = request_id
        self.session_key = session_key
        self.terminal_event = terminal_event
        #: The run we follow, once latched.
        self.run_id: str | None = None
        #: Exactly what a client applying our deltas and resets holds now.
        self.text = ""
        self.done = False
        #: Messages fed, ours or not (a liveness signal, not a per-run count).
        self.frames = 0
        #: Whether the acceptance, and a successful final response, came in.
        self.accepted = False
        self.final_response = False
        #: How many ``reset`` events were emitted.
        self.resets = 0
        #: Frames that broke the profile, by kind; they are skipped, never raised.
        self.malformed: Counter[str] = Counter()
        #: Well-formed frames that are not ours, by reason (other_run, other_session...).
        self.dropped: Counter[str] = Counter()
        self._pending: deque[Mapping[str, object]] = deque(maxlen=PENDING_EVENTS)
        self._latch_from_events = not profile.response.run_id

    @classmethod
    def for_request(
        cls, profile: WebSocketProfile, frame: object, terminal_event: str = "done"
    ) -> RunTracker:
        """A tracker for the run started by the rendered request ``frame``."""
        session_key = lookup(frame, profile.request_session_key)
        return cls(
            profile,
            request_id=lookup(frame, profile.request_id),
            session_key=session_key,
            terminal_event=terminal_event,
        )

    # --- input -----------------------------------------------------------------

    def feed(self, message: str | bytes) -> list[Event]:
        """One WebSocket message as received (text frames are ``str``)."""
        self.frames += 1
        if self.done:
            return []
        if _larger_than(message, self.profile.max_frame_bytes):
            return self._malformed("too_large")
        if isinstance(message, bytes):
            return self._malformed("binary")
        try:
            frame = json.loads(message, parse_constant=_strict_constant)
        except (ValueError, RecursionError):
            return self._malformed("not_json")
        return self.feed_frame(frame)

    def feed_frame(self, frame: object) -> list[Event]:
        """One decoded JSON frame; returns the events it yields for our run."""
        if self.done:
            return []
        if not isinstance(frame, dict):
            return self._malformed("not_object")
        kind = lookup(frame, self.profile.type)
        if not isinstance(kind, str):
            return self._malformed("missing_field")
        if kind == self.profile.response.type:
            return self._response(frame)
        if kind == self.profile.event.type:
            return self._event(frame)
        return self._drop("other_type")

    # --- responses -------------------------------------------------------------

    def _response(self, frame: Mapping[str, object]) -> list[Event]:
        spec = self.profile.response
        request_id = lookup(frame, spec.id)
        if request_id is MISSING:
            return self._malformed("missing_field")
        if request_id != self.request_id:
            return self._drop("other_response")
        if lookup(frame, spec.ok) is not True:
            self.done = True
            if self.accepted:
                # A failed final response of an accepted run ends the stream
                # like a gateway that went away, at once: the run is lost.
                raise UpstreamDisconnected(
                    _message(frame, spec.error_message, "the gateway's final response failed")
                )
            raise UpstreamRunFailed(
                _message(frame, spec.error_message, "the gateway refused the request")
            )
        status = lookup(frame, spec.status)
        if status in spec.accepted or (status is MISSING and not self.accepted):
            return self._accept(frame)
        # A final response does not end a generic gateway's stream: the final
        # event does, and may come after it. OpenClaw sends it after the run's
        # last chat event, so there it is the fallback terminal (with the
        # text of result.payloads, if any) when no final event came.
        self.final_response = True
        if self.profile.profile != "openclaw":
            return []
        text = _result_text(lookup(frame, "payload.result.payloads"))
        items = self._advance(text) if text is not None else []
        items.append(Event(json.dumps({"text": self.text}), self.terminal_event))
        self.done = True
        return items

    def _accept(self, frame: Mapping[str, object]) -> list[Event]:
        self.accepted = True
        canonical = lookup(frame, self.profile.response.session_key)
        if isinstance(canonical, str) and self.session_key not in (MISSING, None):
            self.session_key = canonical  # the gateway rewrites keys; events carry its form
        run_id = lookup(frame, self.profile.response.run_id)
        if self.run_id is None:
            if isinstance(run_id, str) and run_id:
                self.run_id = run_id
            else:
                self._latch_from_events = True
        items: list[Event] = []
        while self._pending and not self.done:
            items += self._event(self._pending.popleft())
        return items

    # --- events ----------------------------------------------------------------

    def _event(self, frame: Mapping[str, object]) -> list[Event]:
        spec = self.profile.event
        name = lookup(frame, spec.name)
        if not isinstance(name, str):
            return self._malformed("missing_field")
        is_chat = name in spec.chat
        if not is_chat and name not in spec.tools:
            return self._drop("other_event")
        if spec.session_key and self.session_key not in (MISSING, None):
            session_key = lookup(frame, spec.session_key)
            if session_key is MISSING:
                return self._malformed("missing_field")
            if session_key != self.session_key:
                return self._drop("other_session")
        run_id = lookup(frame, spec.run_id)
        if not isinstance(run_id, str) or not run_id:
            return self._malformed("missing_field")
        if self.run_id is None:
            if not self._latch_from_events:
                if len(self._pending) == PENDING_EVENTS:
                    self.dropped["pending_overflow"] += 1
                self._pending.append(frame)
                return []
            self.run_id = run_id
        if run_id != self.run_id:
            return self._drop("other_run")
        return self._chat(frame) if is_chat else self._tool(frame)

    def _chat(self, frame: Mapping[str, object]) -> list[Event]:
        spec, states = self.profile.event, self.profile.states
        state = lookup(frame, spec.state)
        if not isinstance(state, str):
            return self._malformed("missing_field")
        if state in states.delta:
            text = _text(lookup(frame, spec.text))
            if text is MISSING:
                return self._malformed("missing_field")
            if text is None:
                return self._drop("no_text")
            return self._advance(text)
        if state in states.final:
            text = _text(lookup(frame, spec.text))
            # A final event without text confirms what was sent.
            items = self._advance(text) if isinstance(text, str) else []
            items.append(Event(json.dumps({"text": self.text}), self.terminal_event))
            self.done = True
            return items
        if state in states.error:
            self.done = True
            raise UpstreamRunFailed(
                _message(frame, spec.error_message, "the gateway reported that the run failed")
            )
        if state in states.aborted:
            self.done = True
            raise UpstreamAborted(
                _message(frame, spec.error_message, "the gateway aborted the run")
            )
        return self._drop("other_state")

    def _advance(self, text: str) -> list[Event]:
        """Cumulative ``text`` → a delta of its new suffix, or a reset (module docstring)."""
        held = self.text
        if text.startswith(held):
            if len(text) == len(held):
                return []
            self.text = text
            return [Event(json.dumps({"text": text[len(held) :]}), "delta")]
        self.text = text
        self.resets += 1
        return [Event(json.dumps({"text": text}), "reset")]

    def _tool(self, frame: Mapping[str, object]) -> list[Event]:
        spec = self.profile.event
        stream = lookup(frame, spec.tool_stream) if spec.tool_stream else MISSING
        if stream in spec.status_streams and spec.tool_stream:
            if not self.profile.forward_status:
                return self._drop("status_not_forwarded")
            data = lookup(frame, spec.status_payload)
            return [Event(json.dumps(None if data is MISSING else data), "status")]
        if spec.tool_stream and stream not in spec.tool_streams:
            return self._drop("not_tool")
        if not self.profile.forward_tools:
            return self._drop("tool_not_forwarded")
        payload = lookup(frame, spec.tool_payload)
        if payload is MISSING:
            return self._malformed("missing_field")
        return [Event(json.dumps(payload), "tool")]

    def _malformed(self, kind: Malformed) -> list[Event]:
        self.malformed[kind] += 1
        return []

    def _drop(self, reason: str) -> list[Event]:
        self.dropped[reason] += 1
        return []


def _larger_than(message: str | bytes, limit: int) -> bool:
    if isinstance(message, bytes) or len(message) > limit:
        return len(message) > limit
    # A code point is 1 to 4 bytes in UTF-8: encode only when it could matter.
    return len(message) * 4 > limit and len(message.encode("utf-8", "surrogatepass")) > limit


def _text(value: object) -> str | Literal[Missing.MISSING] | None:
    """The text at the text path: a string, or the text parts of a content list joined.

    None: a content list without text parts; MISSING: absent or of another type.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        return MISSING
    parts = [
        part["text"]
        for part in value
        if isinstance(part, Mapping)
        and part.get("type", "text") == "text"
        and isinstance(part.get("text"), str)
    ]
    return "".join(parts) if parts else None


def _result_text(payloads: object) -> str | None:
    """The text of a final response's ``result.payloads[].text``, joined (None: none)."""
    if not isinstance(payloads, list):
        return None
    texts = [
        p["text"] for p in payloads if isinstance(p, Mapping) and isinstance(p.get("text"), str)
    ]
    return "".join(texts) if texts else None


def _message(frame: Mapping[str, object], paths: tuple[str, ...], default: str) -> str:
    for path in paths:
        value = lookup(frame, path)
        if isinstance(value, str) and value.strip():
            return value[:MAX_MESSAGE_CHARS]
    return default
