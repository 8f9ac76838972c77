"""The three LLM wire formats, byte for byte as the real APIs send them (scripted producers).

Each builder returns the stream as a list of writes, so a test can put a
comment, a silence or a crash between any two of them.
"""

from __future__ import annotations

import json
from typing import Any

WORDS = ["Hello", ",", " world", "!"]
TEXT = "".join(WORDS)


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def chat_completions(words: list[str] = WORDS) -> list[bytes]:
    """POST /v1/chat/completions with stream: true (data-only events, then [DONE])."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": "gpt-4o-mini",
                "system_fingerprint": "fp_1",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    out += [chunk({"content": w}) for w in words]
    out.append(chunk({}, "stop"))
    out.append(b"data: [DONE]\n\n")
    return out


def _response(status: str, text: str | None) -> dict[str, Any]:
    output = []
    if text is not None:
        output = [
            {
                "id": "msg_1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "model": "gpt-4o-mini",
        "output": output,
    }


def responses(words: list[str] = WORDS) -> list[bytes]:
    """POST /v1/responses with stream: true (typed events, response.completed last)."""
    seq = iter(range(1000))
    out = [
        _sse(
            {
                "type": "response.created",
                "sequence_number": next(seq),
                "response": _response("in_progress", None),
            },
            "response.created",
        )
    ]
    for w in words:
        out.append(
            _sse(
                {
                    "type": "response.output_text.delta",
                    "sequence_number": next(seq),
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": w,
                    "logprobs": [],
                },
                "response.output_text.delta",
            )
        )
    out.append(
        _sse(
            {
                "type": "response.completed",
                "sequence_number": next(seq),
                "response": _response("completed", "".join(words)),
            },
            "response.completed",
        )
    )
    return out


def messages(words: list[str] = WORDS) -> list[bytes]:
    """POST /v1/messages with stream: true (Anthropic's named events, message_stop last)."""
    out = [
        _sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 5, "output_tokens": 1},
                },
            },
            "message_start",
        ),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    for w in words:
        out.append(
            _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": w},
                },
                "content_block_delta",
            )
        )
    out.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    out.append(
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
            "message_delta",
        )
    )
    out.append(_sse({"type": "message_stop"}, "message_stop"))
    return out
