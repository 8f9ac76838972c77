"""Redis key names shared by the session and replay backends.

Every key of one session carries the session's hash tag (``{route:key}``), so
on a Redis Cluster they all live in one slot: the scripts that touch several
of them (and the previous run's keys, which the replay backend's ``OPEN``
finds by name) run on one node.
"""

from __future__ import annotations


def key_part(text: str) -> str:
    """Route names and run ids are free text; escaped, "{route}:{key}" cannot
    collide across routes (route "a", key "b:c" vs route "a:b", key "c")."""
    return text.replace("%", "%25").replace(":", "%3A")


def session_tag(route: str, key: str) -> str:
    """The hash tag of a session's keys. A ``}`` in the key ends the tag early,
    but at the same place in every key of the session: one slot still."""
    return "{" + key_part(route) + ":" + key + "}"
