"""One parameter of a request's query, read without the request's parsed query.

aiohttp's ``request.query`` is yarl's MultiDict of every parameter, cached
on the request's URL (and in the request) for as long as the request lives:
for a stream, its whole life, ~0.7 KiB of an idle one. The proxy reads one
or two parameters, once each, so it parses the raw query string for each
and keeps nothing.
"""

from __future__ import annotations

from urllib.parse import parse_qsl


def query_param(raw_query: str, name: str) -> str | None:
    """The first value of ``name`` in ``raw_query``, decoded; None when absent.

    As ``request.query.get(name)``: yarl parses the same way
    (``parse_qsl`` with blank values kept; ``+`` is a space).
    """
    if not raw_query:
        return None
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        if key == name:
            return value
    return None
