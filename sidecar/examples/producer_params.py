"""The example producer's request parameters: parsed, bounded, and refused with a reason."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

from sidecar.examples.runs import CutHow, Style

Mode = Literal["normal", "crash", "error500", "garbage", "hang", "noterm", "slow-headers"]
MODES: tuple[str, ...] = get_args(Mode)

TOKEN_INTERVAL = 0.05
DEFAULT_TOKENS = 24
DEFAULT_SILENCE = 20.0
KEEPALIVE_INTERVAL = 2.0
DEFAULT_DELAY = 3.0
GARBAGE_LINGER = 1.0
MAX_TOKENS = 10_000
MAX_SECONDS = 3600.0
# Real seconds, never scaled: how late a departed client or a shutdown is noticed.
POLL_STEP = 0.1

ANSWER = (
    "Sure — here is a streamed answer. Each word arrives as its own token event, "
    "like a model writing it. After a third of them the model stops to think for "
    "a while, then the rest of the answer flows in, déjà vu for anyone who has "
    "watched a chat interface, until one final done event closes the stream."
)
# Modes that think (stay silent) mid-answer unless ?silence= says otherwise.
_THINKING_MODES = frozenset({"normal", "slow-headers"})
#: Modes a resumable run can play (the others end the run with its connection).
_RESUMABLE_MODES = frozenset({"normal", "noterm", "hang", "slow-headers"})
_RUN_PARAMS = ("style", "cut", "cuts", "cut_how", "repeat")
_TRUTHY = frozenset({"1", "true", "yes", "on"})
_FALSY = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class StreamParams:
    """One request's parameters; durations in seconds at speed 1."""

    mode: Mode = "normal"
    tokens: int = DEFAULT_TOKENS
    prompt: str = ""
    silence: float = 0.0
    quiet: float = 0.0
    keepalive: float = KEEPALIVE_INTERVAL
    delay: float = DEFAULT_DELAY
    ids: bool = False
    resumable: bool = False
    style: Style = "sse"
    cut: int = 0
    cuts: int = 1
    cut_how: CutHow = "reset"
    repeat: int = 0


class BadRequest(Exception):
    """A parameter the producer cannot play: answered 400 with a JSON error."""


def _scalar(raw: Mapping[str, object], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str | int | float):
        return str(value)
    raise BadRequest(f"{name} must be a string or a number")


def _seconds(raw: Mapping[str, object], name: str, default: float) -> float:
    text = _scalar(raw, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        raise BadRequest(f"{name} must be between 0 and {MAX_SECONDS:g} seconds")
    return value


def _flag(raw: Mapping[str, object], name: str) -> bool:
    text = (_scalar(raw, name) or "").lower()
    if text not in _TRUTHY | _FALSY:
        raise BadRequest(f"{name} must be 1 or 0")
    return text in _TRUTHY


def _count(raw: Mapping[str, object], name: str, default: int) -> int:
    text = _scalar(raw, name)
    try:
        value = default if text is None else int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {text!r}") from None
    if not 0 <= value <= MAX_TOKENS:
        raise BadRequest(f"{name} must be between 0 and {MAX_TOKENS}")
    return value


def _choice(raw: Mapping[str, object], name: str, choices: tuple[str, ...]) -> str:
    value = _scalar(raw, name) or choices[0]
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}")
    return value


def parse_params(raw: Mapping[str, object]) -> StreamParams:
    mode = _choice(raw, "mode", MODES)
    silence = _seconds(raw, "silence", DEFAULT_SILENCE if mode in _THINKING_MODES else 0.0)
    keepalive = _seconds(raw, "keepalive", KEEPALIVE_INTERVAL)
    if keepalive == 0:
        raise BadRequest("keepalive must be more than 0 seconds")
    # By default keepalive comments cover two intervals (at most half of the
    # silence) and the rest is quiet: no bytes at all, long enough for the
    # sidecar's default 15 s heartbeat to show through.
    quiet = _seconds(raw, "quiet", silence - min(2 * keepalive, silence / 2))
    resumable = _flag(raw, "resumable")
    if resumable and mode not in _RESUMABLE_MODES:
        raise BadRequest(f"resumable runs play {', '.join(sorted(_RESUMABLE_MODES))}")
    if not resumable and any(k in raw for k in _RUN_PARAMS):
        raise BadRequest(f"{', '.join(_RUN_PARAMS)} need resumable=1")
    return StreamParams(
        mode=cast(Mode, mode),  # checked against MODES above
        tokens=_count(raw, "tokens", DEFAULT_TOKENS),
        prompt=_prompt(raw),
        silence=silence,
        quiet=min(quiet, silence),
        keepalive=keepalive,
        delay=_seconds(raw, "delay", DEFAULT_DELAY),
        ids=_flag(raw, "ids"),
        resumable=resumable,
        style=cast(Style, _choice(raw, "style", get_args(Style))),
        cut=_count(raw, "cut", 0),
        cuts=_count(raw, "cuts", 1),
        cut_how=cast(CutHow, _choice(raw, "cut_how", get_args(CutHow))),
        repeat=_count(raw, "repeat", 0),
    )


def _prompt(raw: Mapping[str, object]) -> str:
    prompt = raw.get("prompt")
    messages = raw.get("messages")
    if prompt is None and isinstance(messages, list) and messages:
        # An OpenAI-style body: echo the last message.
        last = messages[-1]
        prompt = last.get("content") if isinstance(last, dict) else None
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    return prompt
