"""Which upstream path a request path maps to, or why it is refused (pure).

Strategy: the route prefix is matched and cut on one form of the path, its
segments: the raw path is split on ``/`` (an encoded ``%2F`` stays inside its
segment), the first segments must decode to exactly the prefix's segments,
and the rest goes upstream byte for byte as the client sent it. A path whose
fully decoded form (percent-decoding repeated until nothing changes, so
``%252e`` counts as ``.``) has a ``.`` or ``..`` segment or a backslash is
refused, as nginx refuses what normalises outside its location.
"""

from __future__ import annotations

from urllib.parse import unquote

#: Decoding rounds before a path is called hostile: each round of ``%25``
#: nesting is one more; real clients encode once.
_MAX_ROUNDS = 4


class BadPath(ValueError):
    """The request path cannot be mapped to the route's upstream."""


def fully_decoded(raw: str) -> str:
    """Percent-decode until stable; BadPath if it takes more than a few rounds."""
    text = raw
    for _ in range(_MAX_ROUNDS):
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            return text
        text = decoded
    raise BadPath("path is percent-encoded too many times over")


def check_climb(raw_path: str) -> None:
    """BadPath if the decoded path has a ``.``/``..`` segment or a backslash."""
    decoded = fully_decoded(raw_path)
    if "\\" in decoded:
        raise BadPath("backslashes are not allowed in paths")
    if "\x00" in decoded:
        raise BadPath("NUL is not allowed in paths")
    if any(seg in (".", "..") for seg in decoded.split("/")):
        raise BadPath("path segments . and .. are not allowed")


def upstream_tail(raw_path: str, prefix: str) -> str:
    """The raw rest of ``raw_path`` after the route ``prefix`` ("" or "/…").

    ``prefix`` is the configured path without a trailing slash ("" for a
    route at ``/``). Raises BadPath if the path does not start with the
    prefix segment by segment (say ``/raw%2Fx`` against ``/raw``) or climbs.
    """
    check_climb(raw_path)
    if not raw_path.startswith("/"):
        raise BadPath("path must start with /")
    want = prefix.split("/")[1:] if prefix else []
    have = raw_path.split("/")[1:]
    if len(have) < len(want):
        raise BadPath("path is not under the route's prefix")
    for raw_seg, seg in zip(have, want, strict=False):
        if unquote(raw_seg, errors="surrogateescape") != seg:
            raise BadPath("path does not decode to the route's prefix")
    rest = have[len(want) :]
    return "/" + "/".join(rest) if rest else ""
