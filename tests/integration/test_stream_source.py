"""The awaiting path's HTTP source (sidecar/stream/source.py), on a real upstream connection.

Every HTTP Sink of today takes the splice, so the awaiting path reads HTTP
only for a Sink that refuses it; its cursor handling is held here to what
the splice does (tests/property/test_upstream_resume_properties.py).
"""

from __future__ import annotations

from yarl import URL

from sidecar.metrics import Metrics, RouteMetrics
from sidecar.sse import Comment, Event, Item
from sidecar.stream.source import HttpItems, open_kept
from sidecar.upstream.resumption import KeptRequest, ResumeCursor
from tests.conftest import Script, make_config, sse


async def read_all(items: HttpItems) -> list[Item]:
    got: list[Item] = []
    while (batch := await items.read()) is not None:
        got += batch
    return got


async def test_http_items_pass_every_event_through_the_cursor(upstream):
    upstream.script = Script(
        [
            sse("id: r-3\ndata: 3\n\n: ping\n\n"),
            0.01,
            sse("id: r-4\ndata: 4\n\nid: r-5\ndata: 5\n\n"),
        ]
    )
    route = make_config(upstream.url).routes[0]
    cursor = ResumeCursor()
    cursor.observe(Event("4", None, "r-4"))
    cursor.resuming()  # a resumed connection: the producer repeats 3 and 4
    connection = await open_kept(KeptRequest("GET", str(URL(upstream.url) / "x"), ()), route)
    try:
        counts = RouteMetrics(Metrics(), "test").counts
        got = await read_all(HttpItems(connection, route, counts, cursor))
    finally:
        connection.close()
    assert got == [Comment("ping"), Event("5", None, "r-5")]
    assert (cursor.last_id, cursor.dropped, cursor.catching_up) == ("r-5", 2, False)
    assert counts.bytes_in > 0
