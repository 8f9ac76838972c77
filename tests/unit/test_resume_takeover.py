"""The pure parts of run takeover (sidecar/resume/takeover.py): which client id goes on a run."""

from __future__ import annotations

from sidecar.resume.takeover import client_cursor, ordered_after
from sidecar.upstream.resumption import ResumeCursor


def test_only_a_later_id_of_the_same_form_orders_after():
    assert ordered_after("run-7", "run-12")
    assert ordered_after("41", "42")
    assert not ordered_after("run-12", "run-7")
    assert not ordered_after("run-7", "run-7")
    assert not ordered_after("run-7", "other-9")  # another run's ids say nothing
    assert not ordered_after("run-7", "run-x")
    assert not ordered_after("", "run-8")  # a keepalive's: no place in the order


def test_the_clients_newer_id_becomes_the_cursor_the_fields_stay():
    cursor = ResumeCursor(("data.response.id",), last_id="abc-10", fields={"response.id": "r1"})
    got = client_cursor(cursor, "abc-12")
    assert got is not None
    assert got.last_id == "abc-12"
    assert got.fields == {"response.id": "r1"}
    assert got.wants == cursor.wants
    assert got.position == ("abc-", 12)


def test_an_older_unordered_or_foreign_client_id_is_not_taken():
    cursor = ResumeCursor(last_id="abc-10")
    for client_id in ("abc-9", "abc-10", "xyz-11", "abc-eleven"):
        assert client_cursor(cursor, client_id) is None
    assert client_cursor(ResumeCursor(), "abc-1") is None  # no id logged yet


def test_a_cursor_ordered_by_a_data_field_never_takes_a_client_id():
    # The client's Last-Event-ID is not that order: what it has cannot be told.
    cursor = ResumeCursor(
        ("data.sequence_number",), "data.sequence_number", last_id="e-5",
        fields={"sequence_number": "5"},
    )  # fmt: skip
    assert client_cursor(cursor, "e-9") is None
