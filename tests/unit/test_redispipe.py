"""Packed script calls (sidecar/redispipe.py): the bytes hiredis would pack, byte for byte."""

from __future__ import annotations

import hiredis
from hypothesis import given
from hypothesis import strategies as st
from redis.commands.core import AsyncScript

from sidecar.redispipe import Packed, bulk, evalsha

values = st.lists(st.binary(max_size=40), max_size=6)


class _Script(AsyncScript):
    def __init__(self, sha: str) -> None:  # no client: only its sha is packed
        self.sha = sha


@given(keys=values, args=values)
def test_a_packed_call_is_the_evalsha_command_hiredis_packs(keys, args):
    script = _Script("f" * 40)
    body = b"".join(bulk(value) for value in [*keys, *args])
    command = evalsha(Packed(script, len(keys), len(args), body))
    assert command == hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
