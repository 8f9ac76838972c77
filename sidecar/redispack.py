"""Redis commands packed by hiredis (C) on the asyncio connections.

redis-py's synchronous connections pack commands with hiredis when it is
installed; its asyncio connections always pack in Python, argument by
argument. A resumable run's append call carries ~16 arguments per round
(an event of steady load is one call), which that packs in ~9 us against
~1.5 us for ``hiredis.pack_command``: the largest single cost of an event on
Redis. Replies are already parsed by hiredis (redis-py picks its parser).
Nothing else changes: same bytes on the wire, same errors.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import hiredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)


class _Packing(AbstractConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py does: a command name of several words ("SCRIPT LOAD")
        # goes as separate arguments.
        head = args[0]
        if isinstance(head, str) and " " in head:
            args = (*head.encode().split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            # A value neither can send (None, a bool): redis-py's own DataError.
            return super().pack_command(*args)


class _PackedConnection(_Packing, Connection):
    pass


class _PackedSSLConnection(_Packing, SSLConnection):
    pass


class _PackedUnixConnection(_Packing, UnixDomainSocketConnection):
    pass


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _PackedConnection,
    SSLConnection: _PackedSSLConnection,
    UnixDomainSocketConnection: _PackedUnixConnection,
}


C = TypeVar("C", bound=AbstractConnection)


def packed(connection_class: type[C]) -> type[C]:
    """The class that packs with hiredis for one of redis-py's (others stay as they are)."""
    return cast("type[C]", _PACKED.get(connection_class, connection_class))
