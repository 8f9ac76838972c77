"""What the example gateway (sidecar/examples/gateway.py) says: its answers and frames, pure.

The text of a run, and how it grows delta by delta, depends on the message
alone, so a test can compute what a client must assemble; the ``res``
frames are OpenClaw's shapes (shared/openclaw-gateway.md).
"""

from __future__ import annotations

import random

MARKERS = ("[reset]", "[error]", "[abort]", "[die]", "[slow]", "[tool]")

_ANSWER = (
    "Here is what I found about {topic}: the gateway streams this answer in small "
    "pieces, and every piece repeats all the text so far — déjà vu 🙂 — until a "
    "final event closes the run."
)
_DRAFT = "Thinking about {topic}… hmm, that came out wrong, let me start over."


def topic(message: str) -> str:
    """What the message is about, markers left out (the answer names it)."""
    for marker in MARKERS:
        message = message.replace(marker, " ")
    return " ".join(message.split())[:60] or "nothing in particular"


def final_text(message: str) -> str:
    """The whole answer to ``message``: what a client must end up with."""
    return _ANSWER.format(topic=topic(message))


def _growth(text: str, rng: random.Random, start: int = 0) -> list[str]:
    """Cumulative prefixes of ``text`` from ``start``, growing by 1 to 6 characters."""
    out: list[str] = []
    end = start
    while end < len(text):
        end = min(len(text), end + rng.randint(1, 6))
        out.append(text[:end])
    return out


def cumulative_texts(message: str) -> list[str]:
    """The text of each ``delta`` event for ``message``, in order; ``final`` carries the last.

    With ``[reset]`` the run first drafts a different text, then restarts the
    answer from a shorter prefix that the draft does not start with.
    """
    rng = random.Random(message)
    answer = final_text(message)
    if "[reset]" not in message:
        return _growth(answer, rng)
    draft = _DRAFT.format(topic=topic(message))
    drafted = _growth(draft, rng)[: max(2, len(draft) // 6)]
    return drafted + _growth(answer, rng)


# --- frames ---------------------------------------------------------------------------


def parts(text: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text}]


def canonical_key(key: str, agent: str = "main") -> str:
    """OpenClaw's form of a session key: ``x`` → ``agent:main:x``, lowered."""
    if not key.startswith("agent:"):
        key = f"agent:{agent}:{key}"
    return key.lower()


def accepted(request_id: object, run_id: str, session_key: str | None = None) -> dict[str, object]:
    payload = {"runId": run_id, "status": "accepted"}
    if session_key is not None:
        payload["sessionKey"] = session_key
    return {"type": "res", "id": request_id, "ok": True, "payload": payload}


def finished(request_id: object, run_id: str, status: str) -> dict[str, object]:
    payload = {"runId": run_id, "status": status}
    return {"type": "res", "id": request_id, "ok": True, "payload": payload}


def failed(request_id: object, code: str, message: str) -> dict[str, object]:
    error = {"code": code, "message": message}
    return {"type": "res", "id": request_id, "ok": False, "error": error}
