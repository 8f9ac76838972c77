"""Redis key names shared by the session and replay backends."""

from __future__ import annotations


def key_part(text: str) -> str:
    """Route names and run ids are free text; escaped, "{route}:{key}" cannot
    collide across routes (route "a", key "b:c" vs route "a:b", key "c")."""
    return text.replace("%", "%25").replace(":", "%3A")
