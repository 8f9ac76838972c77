"""The splice (sidecar/stream/splice.py), property-tested end to end: any body, cut anywhere.

Strategy: one real upstream and one real sidecar on loopback per test; every
hypothesis example is one request whose query names the body and the cuts the
upstream plays (each piece is its own HTTP chunk, so its own read in the
splice). What the client gets, decoded with our own Decoder, must be what the
awaiting rule gives for the whole body in one piece: decode, normalise with
``Normalizer.batch`` (stop after a terminal event), then ``end`` or the
protocol ``error`` event (DESIGN.md, "The normalised stream"). Events are
compared decoded, not as bytes: the raw path keeps the upstream's spelling.
Runs of keepalives count as one (comments merge per read). The cases the
properties found bugs with are kept at the end as plain tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.config import Route
from sidecar.errors import ProtocolError
from sidecar.normalize import Batch, Normalizer
from sidecar.sse import Decoder, Event, Item
from tests.budget import examples
from tests.conftest import Running, Script, ScriptedUpstream, make_config

#: The pause between two pieces. Each piece is an HTTP chunk, which httptools
#: hands to the splice as a read of its own even when TCP joins chunks; the
#: pause makes them separate TCP reads too, as from a producer writing as it goes.
GAP = 0.001

SETTINGS = settings(
    deadline=None,
    # The servers are function-scoped fixtures on purpose: started once per
    # test, shared by its examples (each example is a request of its own).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- bodies ---------------------------------------------------------------------------

ascii_text = st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=10)
utf8_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=6)
# Spellings the raw check must not misread: terminal markers inside other text.
tricky = st.sampled_from(
    ["", " ", "[DONE]!", "not [DONE]", "x done", "final?", "a: b", "\x00", "\ufeffdata: x"]
)
#: Values of a plain producer, and of any producer.
plain_values = st.one_of(ascii_text, ascii_text, utf8_text)
values = st.one_of(plain_values, tricky)
event_names = st.one_of(
    st.sampled_from(["tok", "message", "delta", "Done", "ünï", "", " x"]),
    ascii_text.filter(lambda name: name.strip() not in {"end", "error", "keepalive"}),
)
retries = st.one_of(st.integers(0, 10**12).map(str), st.sampled_from(["007", "1x", "-1", ""]))
ids = st.one_of(plain_values, st.just("a\x00b"))
# "\ufeffdata": past the stream's first bytes U+FEFF is no BOM but part of a
# name (see test_a_second_bom_is_not_the_clients_first).
unknown_names = st.sampled_from(["foo", "Data", "data ", "dat", "ID", "events", "\ufeffdata"])


@st.composite
def field_lines(draw: st.DrawFn, mess: int) -> bytes:
    """One ``name: value`` line, in the spellings the spec allows (and a few it ignores)."""
    name = draw(st.sampled_from(["data"] * 4 + ["event", "id", "retry", "unknown"]))
    if name == "unknown":
        name = draw(unknown_names)
    sep = draw(st.sampled_from([": ", ":", ":  ", ""]))
    if sep == "":
        return name.encode()  # no colon: the whole line is the name, the value empty
    texts = values if mess == MESSY else plain_values
    value = draw({"event": event_names, "id": ids, "retry": retries}.get(name, texts))
    return f"{name}{sep}{value}".encode()


comment_lines = st.builds(
    lambda sep, text: f":{sep}{text}".encode(), st.sampled_from([" ", ""]), values
)
terminal_blocks = st.sampled_from(
    [
        [b"event: done", b"data: [DONE]"],
        [b"data: [DONE]"],
        [b"data:  [DONE] "],
        [b"event: final", b"data: {}"],
        [b"id: 9", b"event:done"],
    ]
)
#: A line that is no UTF-8: the stream ends with a protocol error after the events before it.
invalid_lines = st.sampled_from([b"data: a\xffb", b"data: \xc3(", b"event: \xe2\x82", b": \xff"])

#: How far a body strays from a plain producer (an LLM's tokens): PLAIN has LF
#: line ends, no comments and no look-alike terminal markers, so most of its
#: reads go out raw; COMMENTED adds keepalive comments (``: ping`` and a blank
#: line, rewritten on bytes) and the odd invalid line; MESSY adds comments
#: anywhere, CR line ends and values that fool a careless raw check.
PLAIN, COMMENTED, MESSY = range(3)


@st.composite
def event_lines(draw: st.DrawFn, mess: int) -> bytes:
    """A line inside an event: a field, now and then a comment."""
    if mess == MESSY and draw(st.integers(0, 7)) == 0:
        return draw(comment_lines)
    return draw(field_lines(mess))


@st.composite
def events(draw: st.DrawFn, mess: int) -> list[bytes]:
    """The lines of an event; but for MESSY ones, one is a ``data:`` line, as producers send."""
    lines = draw(st.lists(event_lines(mess), min_size=1 if mess == MESSY else 0, max_size=4))
    if mess != MESSY:
        data = b"data: " + draw(plain_values).encode()
        lines.insert(draw(st.integers(0, len(lines))), data)
    return [*lines, b""]


def weighted(**weights: int) -> st.SearchStrategy[str]:
    """One of the names, as often as its weight says (shrinking to the first)."""
    return st.sampled_from([name for name, weight in weights.items() for _ in range(weight)])


#: What the pieces of a stream are, by how messy it is.
KINDS = {
    PLAIN: weighted(event=90, blank=5, terminal=5),
    COMMENTED: weighted(event=60, comment=25, terminal=7, blank=4, invalid=4),
    MESSY: weighted(event=62, comment=16, terminal=9, blank=9, invalid=4),
}


@st.composite
def blocks(draw: st.DrawFn, mess: int) -> list[bytes]:
    """The lines of one piece of a stream; b"" is a blank line (the end of an event)."""
    kind = draw(KINDS[mess])
    if kind == "event":
        return draw(events(mess))
    if kind == "comment":
        if mess == MESSY and draw(st.booleans()):
            return [draw(comment_lines)]  # a line of its own, maybe inside an event
        return [*draw(st.lists(comment_lines, min_size=1, max_size=2)), b""]
    if kind == "terminal":
        return [*draw(terminal_blocks), b""]
    if kind == "invalid":
        return [draw(invalid_lines), b""]
    return [b""]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """An upstream body, PLAIN, COMMENTED or MESSY; maybe with a BOM, maybe cut short."""
    mess = draw(st.integers(PLAIN, MESSY))
    parts = draw(st.lists(blocks(mess), min_size=0 if mess == MESSY else 2, max_size=10))
    lines = list(itertools.chain.from_iterable(parts))
    style = draw(st.sampled_from(["lf"] * 5 + ["crlf", "cr", "mixed"])) if mess == MESSY else "lf"
    ends = {"lf": [b"\n"], "crlf": [b"\r\n"], "cr": [b"\r"], "mixed": [b"\n", b"\r\n", b"\r"]}
    body = b"".join(line + draw(st.sampled_from(ends[style])) for line in lines)
    if draw(st.integers(0, 9)) == 0:
        body = b"\xef\xbb\xbf" + body
    if body and draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body) - 1))]  # ends inside an event (or not)
    return body


@st.composite
def cut_up(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """``body`` as the reads the upstream sends, often cut right after blank lines.

    A read from one event boundary to another is the splice's fast path; one
    that holds a blank line in its middle is its split path. Random cuts
    alone rarely give the first.
    """
    if not body:
        return []
    how = draw(st.integers(0, 9))
    if how == 0 and len(body) <= 48:
        return [body[i : i + 1] for i in range(len(body))]  # one byte at a time
    blank_ends = [i + 2 for i in range(len(body)) if body.startswith(b"\n\n", i)]
    cuts = set(draw(st.lists(st.integers(0, len(body)), max_size=8))) if how >= 5 else set()
    if blank_ends:
        cuts |= set(draw(st.lists(st.sampled_from(blank_ends), max_size=6)))
    bounds = sorted(cuts | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(bounds) if a < b]


@dataclass(frozen=True)
class Case:
    pieces: list[bytes]
    #: Index of the piece before which the upstream goes silent for ``pause`` seconds.
    pause_at: int | None = None
    pause: float = 0.0

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


cases = bodies().flatmap(lambda body: cut_up(body).map(Case))


# --- the reference: the whole body at once ---------------------------------------------


def decode_all(raw: bytes) -> list[Item]:
    decoder = Decoder()
    return [*decoder.feed(raw), *decoder.close()]


def reference(body: bytes, route: Route, normalizer: Normalizer) -> list[Item]:
    """What the client must get: the awaiting rule (stream/pump.py) on the body in one read."""
    decoder = Decoder(route.limits.max_line_bytes, route.limits.max_event_bytes)
    batch = Batch()
    try:
        batch = normalizer.batch(decoder.feed(body))
        if batch.terminal:
            return decode_all(batch.data)
        if decoder.error is not None:
            raise decoder.error
        decoder.close()
        # A clean close: nothing known to be missing.
        last = normalizer.dialect.end("upstream_closed", partial=False)
    except ProtocolError as exc:
        last = normalizer.dialect.error(exc.code, str(exc), partial=batch.forwarded > 0)
    return decode_all(batch.data + last)


# --- the servers ------------------------------------------------------------------------


@dataclass
class Harness:
    """One upstream and one sidecar; every case is one request through them."""

    upstream: ScriptedUpstream
    sidecar: Running
    route: Route
    normalizer: Normalizer = field(init=False)
    keepalive: Event = field(init=False)
    scripts: dict[str, Script] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        route = self.route
        self.normalizer = Normalizer(route.comments, route.keepalive, route.terminal)
        (keepalive,) = decode_all(self.normalizer.keepalive)
        assert isinstance(keepalive, Event)
        self.keepalive = keepalive
        self.upstream.script = self._script

    def _script(self, request: web.Request) -> Script:
        return self.scripts.pop(request.query["case"])

    async def receive(self, case: Case) -> list[Item]:
        """Play ``case`` upstream; every item the client decodes, comments included."""
        steps: list[bytes | float] = []
        for i, piece in enumerate(case.pieces):
            if i == case.pause_at:
                steps.append(case.pause)
            elif i:
                steps.append(GAP)
            steps.append(piece)
        name = str(next(self.counter))
        self.scripts[name] = Script(steps)
        decoder = Decoder()
        items: list[Item] = []
        http = self.sidecar.http
        async with asyncio.timeout(10), http.get(f"{self.sidecar.url}/s?case={name}") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            async for chunk in resp.content.iter_any():
                # LF only, whatever the upstream used: a read with a CR is
                # re-encoded, for clients that split lines on LF alone.
                assert b"\r" not in chunk
                items += decoder.feed(chunk)
        items += decoder.close()  # raises if the stream did not end between events
        return items

    def check_ending(self, got: Sequence[Item]) -> None:
        """Exactly one terminal event, and it is the last thing the client got."""
        assert got, "the client got nothing, not even a terminal event"
        last = got[-1]
        assert isinstance(last, Event), got
        assert self.ends_stream(last), got
        assert not any(isinstance(i, Event) and self.ends_stream(i) for i in got[:-1]), got

    def ends_stream(self, event: Event) -> bool:
        # The generated upstreams never use these names for events of their own.
        return self.normalizer.is_terminal(event) or event.event in {"end", "error"}


async def start(upstream: ScriptedUpstream, start_sidecar: Any, **route: Any) -> Harness:
    config = make_config(upstream.url, **route)
    sidecar = await start_sidecar(config)
    return Harness(upstream, sidecar, config.routes[0])


QUIET = {"heartbeat": {"interval": "1h"}}


@pytest.fixture
async def converting(upstream, start_sidecar) -> Harness:
    return await start(upstream, start_sidecar, comments="convert", **QUIET)


@pytest.fixture(params=["pass", "drop"])
async def passing(request, upstream, start_sidecar) -> Harness:
    return await start(upstream, start_sidecar, comments=request.param, **QUIET)


@pytest.fixture
async def beating(upstream, start_sidecar) -> Harness:
    return await start(upstream, start_sidecar, comments="drop", heartbeat={"interval": "10ms"})


def merged(items: Sequence[Item], keepalive: Event) -> list[Item]:
    """Runs of keepalives as one.

    normalize.py merges consecutive comments into one keepalive per read, so
    how many a run of comments becomes depends on the cuts; that it is there
    and where does not.
    """
    return [b for a, b in zip([None, *items], items, strict=False) if not (a == b == keepalive)]


# --- properties -----------------------------------------------------------------------


@settings(SETTINGS, max_examples=examples(0.75))
@given(case=cases)
@example(case=Case([b"data: 1\n\nid: 2\n", b"data: 2\n\ndata:3\nfoo: x\n\n", b"data: [DONE]\n\n"]))
@example(
    case=Case([b"\xef\xbb", b"\xbfdata: a\r", b"\n\r\n: c\n\nevent: x\n", b"data: \xc3\xa9\n\n"])
)
@example(case=Case([b"data: 1\n\ndata: 2\n\nevent: done\ndata: x\n\ndata: 3\n\n"]))
@example(case=Case([b"data: 1\n\ndata: a\xffb\n\ndata: 2\n\n"]))
@example(case=Case([b"data: 1\n\n", b"data: 2\n"]))
# A protocol error found in the read that ended an event: nothing after it goes out.
@example(case=Case([b"data: 1\n", b"\ndata: a\xffb\n", b"data: 2\n\n"]))
# A whole read with CR in it: re-encoded, not passed on.
@example(case=Case([b"data: 1\n\n", b"data: a\r\nid: 2\r\n\n"]))
# Whole reads with comments: rewritten on bytes only where an event is all comments.
@example(case=Case([b"data: 1\n\n", b"data: 2\ndata: 3\n\n: c\n\n"]))
@example(case=Case([b"data: 1\n\n", b": c\ndata: 2\n\n"]))
async def test_any_cuts_give_the_events_of_the_whole_body(converting: Harness, case: Case) -> None:
    expected = reference(case.body, converting.route, converting.normalizer)
    got = await converting.receive(case)
    keepalive = converting.keepalive
    assert merged(got, keepalive) == merged(expected, keepalive)
    converting.check_ending(got)


@settings(SETTINGS, max_examples=examples(0.25))
@given(case=cases)
@example(case=Case([b": a\n", b"data: 1\n: b\n", b"\n: c\n\n:d\n\n"]))
async def test_passed_and_dropped_comments_follow_the_route(passing: Harness, case: Case) -> None:
    expected = reference(case.body, passing.route, passing.normalizer)
    got = await passing.receive(case)
    # Passed comments are compared too: split or not, each is passed once, in place.
    assert got == expected
    assert passing.keepalive not in got
    passing.check_ending(got)


def is_open_at(body: bytes, offset: int, normalizer: Normalizer) -> bool:
    """Whether the stream still runs after the upstream sent ``body[:offset]``."""
    decoder = Decoder()
    try:
        items = decoder.feed(body[:offset])
    except ProtocolError:
        return False
    return decoder.error is None and not any(
        isinstance(i, Event) and normalizer.is_terminal(i) for i in items
    )


@st.composite
def paused(draw: st.DrawFn) -> Case:
    case = draw(cases.filter(lambda case: len(case.pieces) >= 2))
    return Case(case.pieces, pause_at=draw(st.integers(1, len(case.pieces) - 1)), pause=0.08)


@settings(SETTINGS, max_examples=examples(0.1))
@given(case=paused())
async def test_heartbeats_fall_between_events(beating: Harness, case: Case) -> None:
    expected = reference(case.body, beating.route, beating.normalizer)
    got = await beating.receive(case)
    keepalive = beating.keepalive
    # Comments are dropped on this route: every keepalive is a heartbeat. One
    # inside an event would change that event's data (or break the decoding).
    assert [i for i in got if i != keepalive] == expected
    beating.check_ending(got)
    assert case.pause_at is not None
    offset = sum(map(len, case.pieces[: case.pause_at]))
    if is_open_at(case.body, offset, beating.normalizer):
        assert keepalive in got, "no heartbeat in 80 ms of upstream silence"


# --- cases the properties found bugs with -----------------------------------------------

#: The end event of a stream that forwarded no event.
WHOLE_END = Event('{"type":"end","reason":"upstream_closed","partial":false}', "end")


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b"\n\n", b"\n\n"], id="fast-path"),  # the second read goes out whole
        pytest.param([b": a\n\n\n\n"], id="split-path"),  # the blank line after the comment
        pytest.param([b"foo: 1\n\nfoo: 2\n\n"], id="unknown-fields"),  # no event either
        pytest.param([b": c\n\n", b"foo: 1\n\n: c\n\n"], id="rewrite"),  # comments on bytes
    ],
)
async def test_blank_lines_alone_do_not_make_an_answer_partial(
    converting: Harness, pieces: list[bytes]
) -> None:
    """Raw blocks were counted by their blank lines, not by the events in them."""
    case = Case(pieces)
    assert reference(case.body, converting.route, converting.normalizer)[-1] == WHOLE_END
    assert (await converting.receive(case))[-1] == WHOLE_END


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b"\xef\xbb\xbf", b"\xef\xbb\xbfdata: x\ndata: y\n\n"], id="fast-path"),
        pytest.param([b"\xef\xbb\xbf\n\n\xef\xbb\xbfdata: x\ndata: y\n\n"], id="split-path"),
    ],
)
async def test_a_second_bom_is_not_the_clients_first(
    converting: Harness, pieces: list[bytes]
) -> None:
    """A block starting with a second BOM went out raw as the client's first bytes.

    The client's decoder dropped that BOM as the stream's own, so the line
    U+FEFF ``data: x`` (an unknown field upstream) became part of the data.
    """
    case = Case(pieces)
    expected = [
        Event("y"),
        *decode_all(converting.normalizer.dialect.end("upstream_closed", partial=False)),
    ]
    assert reference(case.body, converting.route, converting.normalizer) == expected
    assert await converting.receive(case) == expected


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b"data: 1\n\n: \xff\n\n"], id="split-path"),
        pytest.param([b"data: 1\n\n", b": \xff\n\n", b"data: 2\n\n"], id="fast-path"),
    ],
)
async def test_invalid_utf8_in_a_comment_ends_the_stream(
    converting: Harness, pieces: list[bytes]
) -> None:
    """Comments rewritten on bytes hid their invalid UTF-8, and the stream went on."""
    case = Case(pieces)
    message = "upstream sent invalid UTF-8 at byte 2 of a line"
    error = converting.normalizer.dialect.error("upstream_protocol", message, partial=True)
    assert reference(case.body, converting.route, converting.normalizer) == [
        Event("1"),
        *decode_all(error),
    ]
    assert await converting.receive(case) == [Event("1"), *decode_all(error)]
