"""Pure Server-Sent Events wire format: items, an incremental decoder, an encoder.

Nothing in this package does I/O or imports asyncio or aiohttp: bytes go in,
items come out (and the other way round).
"""

from sidecar.sse.decoder import DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_LINE_BYTES, Decoder
from sidecar.sse.encoder import encode_comment, encode_event, encode_item
from sidecar.sse.events import Comment, Event, Item

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "Comment",
    "Decoder",
    "Event",
    "Item",
    "encode_comment",
    "encode_event",
    "encode_item",
]
