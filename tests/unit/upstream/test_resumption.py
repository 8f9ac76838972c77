"""The pure side of upstream resume: the kept request, the cursor, repeats and the resume form."""

from __future__ import annotations

import json

import pytest

from sidecar.errors import (
    InvalidResumeState,
    InvalidUTF8,
    UpstreamDisconnected,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from sidecar.sse import Comment, Event
from sidecar.upstream.resumption import (
    KeptRequest,
    ResumeCursor,
    UpstreamResume,
    backoff_delay,
    id_position,
    may_resume,
    repeats,
    resume_request,
)

KEPT = KeptRequest(
    "POST",
    "http://llm:8000/v1/chat/x%2Fy?q=hello%20world&b=1",
    (("Content-Type", "application/json"), ("Authorization", "Bearer t"), ("X-Request-ID", "r1")),
    b'{"prompt": "hi"}',
)

#: OpenAI's background Responses: GET /v1/responses/{id}?stream=true&starting_after={seq}.
OPENAI = UpstreamResume(
    enabled=True,
    method="GET",
    path="/v1/responses/{data.response.id}",
    query={"stream": "true", "starting_after": "{data.sequence_number}"},
    header=None,
    body="drop",
    order="data.sequence_number",
)


def token(event_id: str | None, text: str = "x") -> Event:
    return Event(json.dumps({"text": text}), "token", event_id)


def openai_event(kind: str, seq: int, **extra: object) -> Event:
    return Event(json.dumps({"type": kind, "sequence_number": seq, **extra}), kind)


# --- the kept request -------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"prompt": "hi"}', b"", None, bytes(range(256))])
def test_kept_request_round_trips_through_bytes(body: bytes | None) -> None:
    kept = KeptRequest(KEPT.method, KEPT.url, (*KEPT.headers, ("X-Odd", "caf\udce9")), body)
    data = kept.to_bytes()
    assert json.loads(data)["url"] == KEPT.url  # JSON, so Redis and humans can read it
    assert KeptRequest.from_bytes(data) == kept


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"method": "GET"}',
        b'{"method": "GET", "url": "http://u/", "headers": [["a"]], "body": null}',
        b'{"method": "GET", "url": "http://u/", "headers": [["a", 1]], "body": null}',
        b'{"method": "GET", "url": "http://u/", "headers": [], "body": 3}',
        b'{"method": "GET", "url": "http://u/", "headers": [], "body": "not base64!"}',
        b"\xff\xfe",
    ],
)
def test_a_kept_request_that_does_not_parse_is_our_error(data: bytes) -> None:
    with pytest.raises(InvalidResumeState):
        KeptRequest.from_bytes(data)


# --- the cursor --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_id", "position"),
    [
        ("42", ("", 42)),
        ("run-7", ("run-", 7)),
        ("a1b2-0012", ("a1b2-", 12)),
        ("resp_abc", None),
        ("", None),
        ("9" * 31, None),  # not a counter anyone uses: opaque
    ],
)
def test_id_position_is_the_trailing_number(event_id: str, position: object) -> None:
    assert id_position(event_id) == position


def test_cursor_follows_the_last_upstream_id_and_skips_comments() -> None:
    cursor = ResumeCursor.for_config(UpstreamResume(enabled=True))
    items = [token("run-1"), Comment("ping"), token(None), token("run-2")]
    assert cursor.take(items) == items
    assert (cursor.last_id, cursor.position) == ("run-2", ("run-", 2))
    cursor.observe(token(""))  # an empty id resets the last event id (WHATWG)
    assert (cursor.last_id, cursor.position) == (None, None)


def test_cursor_remembers_fields_of_earlier_events_for_the_openai_form() -> None:
    cursor = ResumeCursor.for_config(OPENAI)
    cursor.take(
        [
            openai_event("response.created", 0, response={"id": "resp_1", "status": "queued"}),
            openai_event("response.output_text.delta", 1, delta="Hi"),
            Event("not json", "odd"),
            openai_event("response.output_text.delta", 2, delta="!"),
        ]
    )
    assert cursor.last_id is None
    assert cursor.fields == {"response.id": "resp_1", "sequence_number": "2"}
    assert cursor.position == ("", 2)


def test_cursor_round_trips_through_bytes() -> None:
    cursor = ResumeCursor.for_config(OPENAI)
    cursor.take([openai_event("response.created", 5, response={"id": "resp_9"})])
    back = ResumeCursor.from_bytes(cursor.to_bytes())
    assert (back.last_id, back.fields, back.wants, back.order, back.position) == (
        None,
        {"response.id": "resp_9", "sequence_number": "5"},
        ("response.id", "sequence_number"),
        "data.sequence_number",
        ("", 5),
    )
    plain = ResumeCursor.for_config(UpstreamResume(enabled=True))
    plain.observe(token("17"))
    assert ResumeCursor.from_bytes(plain.to_bytes()).position == ("", 17)


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b'"x"',
        b'{"last_id": 3, "fields": {}, "wants": [], "order": "id"}',
        b'{"last_id": null, "fields": {"a": 1}, "wants": [], "order": "id"}',
        b'{"last_id": null, "fields": {}, "wants": "a", "order": "id"}',
        b'{"last_id": null, "fields": {}, "wants": [], "order": "seq"}',
    ],
)
def test_a_cursor_that_does_not_parse_is_our_error(data: bytes) -> None:
    with pytest.raises(InvalidResumeState):
        ResumeCursor.from_bytes(data)


# --- repeats ------------------------------------------------------------------------------


def test_repeats_are_at_or_before_the_cursor_within_one_prefix() -> None:
    cursor = ResumeCursor()
    cursor.observe(token("run-12"))
    assert repeats(cursor, token("run-12"))
    assert repeats(cursor, token("run-3"))
    assert not repeats(cursor, token("run-13"))
    assert not repeats(cursor, token("other-3"))  # another counter: no order known
    assert not repeats(cursor, token(None))
    opaque = ResumeCursor()
    opaque.observe(token("a7f3"))  # ends in a digit, yet only the exact id is known
    opaque.observe(token("uuid-x"))
    assert repeats(opaque, token("uuid-x"))
    assert not repeats(opaque, token("uuid-y"))


def test_after_a_resume_repeats_are_dropped_up_to_the_first_new_event() -> None:
    cursor = ResumeCursor()
    cursor.take([token(str(i)) for i in range(1, 6)])
    cursor.resuming()
    again = [token("3"), Comment("c"), token("4"), token("5"), token("6"), token("2"), token("7")]
    kept = cursor.take(again)
    # Once a new event came, the producer's own order is trusted: a later
    # lower id is its business, not a repeat (no event is lost to a guess).
    assert kept == [Comment("c"), token("6"), token("2"), token("7")]
    assert (cursor.dropped, cursor.catching_up, cursor.last_id) == (3, False, "7")


def test_an_event_without_position_does_not_end_the_catching_up() -> None:
    cursor = ResumeCursor()
    cursor.take([token("1"), token("2")])
    cursor.resuming()
    assert cursor.take([token(None, "notice"), token("2"), token("3")]) == [
        token(None, "notice"),
        token("3"),
    ]


def test_openai_repeats_go_by_sequence_number() -> None:
    cursor = ResumeCursor.for_config(OPENAI)
    cursor.take([openai_event("response.created", 0, response={"id": "r"})])
    cursor.take([openai_event("d", n) for n in (1, 2, 3)])
    cursor.resuming()
    kept = cursor.take([openai_event("d", n) for n in (2, 3, 4)])
    assert kept == [openai_event("d", 4)]


# --- the resume request -----------------------------------------------------------------


def test_default_form_is_the_same_request_with_last_event_id() -> None:
    cursor = ResumeCursor.for_config(UpstreamResume(enabled=True))
    assert resume_request(KEPT, UpstreamResume(enabled=True), cursor) is None  # no id yet
    cursor.observe(token("run-5"))
    kept = KeptRequest(KEPT.method, KEPT.url, (*KEPT.headers, ("last-event-id", "old")), KEPT.body)
    again = resume_request(kept, UpstreamResume(enabled=True), cursor)
    assert again == KeptRequest(
        KEPT.method, KEPT.url, (*KEPT.headers, ("Last-Event-ID", "run-5")), KEPT.body
    )


def test_openai_form_gets_the_response_by_id_after_its_sequence_number() -> None:
    cursor = ResumeCursor.for_config(OPENAI)
    assert resume_request(KEPT, OPENAI, cursor) is None
    cursor.take([openai_event("response.created", 0, response={"id": "resp_67c"})])
    cursor.take([openai_event("response.output_text.delta", 41, delta="x")])
    again = resume_request(KEPT, OPENAI, cursor)
    assert again == KeptRequest(
        "GET",
        "http://llm:8000/v1/responses/resp_67c?stream=true&starting_after=41",
        (("Authorization", "Bearer t"), ("X-Request-ID", "r1")),  # no body, no Content-Type
        None,
    )


def test_query_form_keeps_the_other_parameters_as_sent() -> None:
    config = UpstreamResume(enabled=True, header=None, query={"after": "{id}", "b": "2"})
    cursor = ResumeCursor.for_config(config)
    cursor.observe(token("e 7&x"))
    again = resume_request(KEPT, config, cursor)
    assert again is not None
    assert again.url == "http://llm:8000/v1/chat/x%2Fy?q=hello%20world&after=e%207%26x&b=2"
    assert (again.method, again.body) == ("POST", KEPT.body)


@pytest.mark.parametrize("value", ["..", ".", ""])
def test_a_path_value_that_would_climb_gives_no_request(value: str) -> None:
    config = UpstreamResume(enabled=True, header=None, path="/runs/{data.run}")
    cursor = ResumeCursor.for_config(config)
    cursor.observe(Event(json.dumps({"run": value})))
    assert resume_request(KEPT, config, cursor) is None


def test_path_values_are_escaped_into_one_segment() -> None:
    config = UpstreamResume(enabled=True, header=None, path="/runs/{data.run}/events")
    cursor = ResumeCursor.for_config(config)
    cursor.observe(Event(json.dumps({"run": "../admin?x=1"})))
    again = resume_request(KEPT, config, cursor)
    assert again is not None
    assert again.url == "http://llm:8000/runs/..%2Fadmin%3Fx%3D1/events"


def test_backoff_doubles_up_to_its_cap_and_jitters_down_to_half() -> None:
    config = UpstreamResume(enabled=True, backoff=0.25, max_backoff=1.0)
    assert [backoff_delay(config, n, 1.0) for n in (1, 2, 3, 4, 100)] == [
        0.25,
        0.5,
        1.0,
        1.0,
        1.0,
    ]
    assert backoff_delay(config, 2, 0.0) == 0.25


def test_backoff_stops_doubling_after_thirty_doublings() -> None:
    """The exponent stops at 30, so any attempt number gives a finite wait."""
    config = UpstreamResume(enabled=True, backoff=1.0, max_backoff=2.0**31)
    assert backoff_delay(config, 30, 1.0) == 2.0**29
    assert backoff_delay(config, 31, 1.0) == 2.0**30
    assert backoff_delay(config, 32, 1.0) == 2.0**30  # under the cap, yet no 31st doubling
    assert backoff_delay(config, 10**9, 1.0) == 2.0**30  # 2.0 ** 10**9 would overflow


def test_only_cuts_and_silences_are_resumed() -> None:
    assert may_resume(UpstreamDisconnected("cut"), total_limit_reached=False)
    assert may_resume(UpstreamTimeout("idle"), total_limit_reached=False)
    assert not may_resume(UpstreamTimeout("max_duration"), total_limit_reached=True)
    assert not may_resume(UpstreamStatus(500, "late 500"), total_limit_reached=False)
    assert not may_resume(UpstreamUnreachable("refused"), total_limit_reached=False)
    assert not may_resume(InvalidUTF8("bad bytes"), total_limit_reached=False)


# --- edges (what mutation testing asked for) --------------------------------------------


def test_kept_request_bytes_are_compact_json() -> None:
    kept = KeptRequest("GET", "http://u/x", (("A", "b"),), b"hi")
    assert (
        kept.to_bytes()
        == b'{"method":"GET","url":"http://u/x","headers":[["A","b"]],"body":"aGk="}'
    )


def kept_doc(**fields: object) -> bytes:
    return json.dumps({"method": "G", "url": "u", "headers": [], **fields}).encode()


MISSING = "kept request: method, url or headers missing"
NOT_BASE64 = "kept request: body is not base64 text"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "kept request: not JSON"),
        (b"[]", "kept request: not a JSON object"),
        (kept_doc(method=1), MISSING),
        (kept_doc(url=None), MISSING),
        (kept_doc(headers=1), MISSING),
        (kept_doc(headers=[1]), "kept request: a header is not a [name, value] pair"),
        (kept_doc(body=1), NOT_BASE64),
        # Not base64 by its alphabet, though dropping the space would decode ("abc").
        (kept_doc(body="YW Jj"), NOT_BASE64),
    ],
)
def test_a_bad_kept_request_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(InvalidResumeState) as info:
        KeptRequest.from_bytes(data)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"1", "resume cursor: not a JSON object"),
        (b'{"last_id": 3, "fields": {}, "wants": [], "order": "id"}',
         "resume cursor: last_id or order of the wrong type"),
        (b'{"last_id": null, "fields": {}, "wants": [], "order": 1}',
         "resume cursor: last_id or order of the wrong type"),
        (b'{"last_id": null, "fields": {"a": 1}, "wants": [], "order": "id"}',
         "resume cursor: fields must map names to text"),
        (b'{"last_id": null, "fields": {}, "wants": [1], "order": "id"}',
         "resume cursor: wants must be a list of paths"),
        (b'{"last_id": null, "fields": {}, "wants": [], "order": "seq"}',
         "resume cursor: unknown order 'seq'"),
    ],
)  # fmt: skip
def test_a_bad_cursor_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(InvalidResumeState) as info:
        ResumeCursor.from_bytes(data)
    assert str(info.value) == message


def test_cursor_bytes_are_compact_json() -> None:
    cursor = ResumeCursor(last_id="r-1")
    assert cursor.to_bytes() == b'{"last_id":"r-1","fields":{},"wants":[],"order":"id"}'


def test_the_default_form_parses_no_data() -> None:
    """Only data.PATH placeholders and a data order make the cursor read JSON data."""
    assert ResumeCursor.for_config(UpstreamResume(enabled=True)).wants == ()
    cursor = ResumeCursor.for_config(UpstreamResume(enabled=True, order="data.seq"))
    assert cursor.wants == ("seq",)
    cursor.observe(Event('{"seq": 4, "id": "x"}', None, "e-9"))
    assert (cursor.fields, cursor.position) == ({"seq": "4"}, ("", 4))


def test_a_cursor_drops_nothing_until_a_resume() -> None:
    cursor = ResumeCursor.from_bytes(ResumeCursor(last_id="5").to_bytes())
    assert (cursor.catching_up, cursor.dropped) == (False, 0)
    assert cursor.take([token("3"), token("5")]) == [token("3"), token("5")]
    cursor.resuming()
    assert cursor.take([token("5")]) == []


def test_events_without_data_or_without_the_order_field() -> None:
    plain = ResumeCursor()
    plain.observe(Event(None, None, "7"))  # an id-only block: no data to look at
    assert plain.position == ("", 7)
    cursor = ResumeCursor.for_config(OPENAI)
    cursor.observe(openai_event("d", 3))
    cursor.resuming()
    assert cursor.take([Event(None, None, "x"), Event('{"type": "x"}'), openai_event("d", 4)]) == [
        Event(None, None, "x"),
        Event('{"type": "x"}'),
        openai_event("d", 4),
    ]


def test_thirty_digits_are_still_a_counter() -> None:
    assert id_position("r-" + "9" * 30) == ("r-", int("9" * 30))


def test_a_resume_url_keeps_the_kept_encoding_and_escapes_what_it_adds() -> None:
    config = UpstreamResume(enabled=True, header=None, query={"a/b": "{id}", "after": "{id}"})
    cursor = ResumeCursor.for_config(config)
    cursor.observe(token("x/y"))
    kept = KeptRequest("GET", "http://u/p%7Eq?after=1=2&a%2Fb=old&keep=%7e", ())
    again = resume_request(kept, config, cursor)
    assert again is not None
    assert again.url == "http://u/p%7Eq?keep=%7e&a%2Fb=x%2Fy&after=x%2Fy"


def test_a_kept_body_keeps_its_content_type_even_when_empty() -> None:
    cursor = ResumeCursor(last_id="1")
    kept = KeptRequest("POST", "http://u/", (("Content-Type", "application/json"),), None)
    again = resume_request(kept, UpstreamResume(enabled=True), cursor)
    assert again is not None
    assert again.headers == (("Content-Type", "application/json"), ("Last-Event-ID", "1"))
