"""The log Sink of a resumable run (sidecar/resume/sink.py): entries logged, live client written.

A real memory log; the client is a stand-in for a follower whose Sink says
whether a write fit (the socket's buffer), so each rule of the direct path
is checked alone: written while caught up and keeping up, let go (once) the
moment it is behind or its write would queue, ended on the terminal event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sidecar.normalize import Batch
from sidecar.replay.base import Entry
from sidecar.replay.memory import MemoryReplayStore
from sidecar.resume.sink import LogSink


@dataclass
class FakeSink:
    room: bool = True
    wrote: list[bytes] = field(default_factory=list)
    took_transport: int = 0

    def take_transport(self) -> None:
        self.took_transport += 1

    def write_if_room(self, data: bytes) -> bool:
        if self.room:
            self.wrote.append(data)
        return self.room


@dataclass
class Client:
    sink: FakeSink = field(default_factory=FakeSink)
    after_seq: int = 0
    ended: bool = False
    released_times: int = 0

    def released(self) -> None:
        self.released_times += 1


def entry(seq: int, terminal: bool = False) -> Entry:
    return Entry(seq, f"r-{seq}", b"id: r-%d\ndata: %d\n\n" % (seq, seq), terminal)


@pytest.fixture
async def sink() -> LogSink:
    log = await MemoryReplayStore().open("chat", "k", "r", 100, 1 << 20)
    return LogSink(log, "chat")


async def test_each_entry_is_logged_and_written_to_the_caught_up_client(sink):
    client = Client()
    assert sink.direct(client)
    sink.emit_entry(entry(1))
    sink.emit_entry(entry(2))
    assert [e.seq for e in await sink.log.read(0, 0)] == [1, 2]
    assert client.sink.wrote == [entry(1).data, entry(2).data]
    assert client.after_seq == sink.last_seq == 2
    assert client.sink.took_transport == 1


async def test_a_client_behind_the_log_is_not_taken(sink):
    sink.emit_entry(entry(1))
    client = Client(after_seq=0)
    assert not sink.direct(client)
    sink.emit_entry(entry(2))
    assert client.sink.wrote == []


async def test_a_write_that_would_queue_lets_the_client_go_and_the_log_keeps_it(sink):
    client = Client()
    sink.direct(client)
    client.sink.room = False
    sink.emit_entry(entry(1))
    assert client.released_times == 1
    assert client.after_seq == 0  # it reads entry 1 from the log
    client.sink.room = True
    sink.emit_entry(entry(2))
    assert client.sink.wrote == []  # let go: the follower catches up by itself
    assert [e.seq for e in await sink.log.read(0, 0)] == [1, 2]


async def test_a_client_that_missed_an_entry_is_let_go(sink):
    client = Client()
    sink.direct(client)
    client.after_seq = 5  # its place no longer matches the log's
    sink.emit_entry(entry(1))
    assert client.released_times == 1
    assert client.sink.wrote == []


async def test_the_terminal_entry_ends_the_client_and_lets_it_go(sink):
    client = Client()
    sink.direct(client)
    sink.emit_entry(entry(1, terminal=True))
    assert client.ended
    assert client.released_times == 1
    assert client.sink.wrote == [entry(1).data]


async def test_a_batch_goes_as_one_write_and_counts_as_its_entries(sink):
    client = Client()
    sink.direct(client)
    batch = Batch(data=entry(1).data + entry(2).data, entries=[entry(1), entry(2)])
    sink.emit_nowait(batch)
    assert client.sink.wrote == [batch.data]
    assert client.after_seq == 2


async def test_a_comment_passed_on_is_not_written_to_the_client_it_is_in_no_entry(sink):
    # What followers read from the log is what the live client gets: a
    # comment the route passes on has no entry, so neither sees it.
    client = Client()
    sink.direct(client)
    data = entry(1).data + b": note\n\n" + entry(2).data
    sink.emit_nowait(Batch(data=data, comments_passed=1, entries=[entry(1), entry(2)]))
    assert client.sink.wrote == [entry(1).data + entry(2).data]
    assert [e.seq for e in await sink.log.read(0, 0)] == [1, 2]
