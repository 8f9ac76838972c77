"""The official OpenAI and Anthropic SDKs, unchanged, through a route with the matching dialect.

A scripted producer speaks each wire format byte for byte (tests/integration/
sdk_wire.py); every case runs the loop the SDK docs show, directly against
the producer and through the sidecar, and compares what the caller sees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anthropic
import httpx2 as httpx  # the transport of both SDKs
import openai
import pytest

from tests.conftest import Script, make_config
from tests.integration import sdk_wire

#: A stand-in for httpx's 5 s read timeout, scaled down with the heartbeat.
READ_TIMEOUT = 0.5


async def openai_chat(base: str, read_timeout: float) -> tuple[str, int]:
    client = openai.AsyncOpenAI(
        base_url=base + "/v1",
        api_key="sk-test",
        max_retries=0,
        timeout=httpx.Timeout(5.0, read=read_timeout),
    )
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text, chunks = "", 0
        async for chunk in stream:  # the loop of the OpenAI docs
            chunks += 1
            text += chunk.choices[0].delta.content or ""
        return text, chunks


async def openai_responses(base: str, read_timeout: float) -> tuple[str, int]:
    client = openai.AsyncOpenAI(
        base_url=base + "/v1",
        api_key="sk-test",
        max_retries=0,
        timeout=httpx.Timeout(5.0, read=read_timeout),
    )
    async with client:
        stream = await client.responses.create(model="gpt-4o-mini", input="hi", stream=True)
        text, events = "", 0
        async for event in stream:
            events += 1
            if event.type == "response.output_text.delta":
                text += event.delta
        return text, events


async def anthropic_messages(base: str, read_timeout: float) -> tuple[str, int]:
    client = anthropic.AsyncAnthropic(
        base_url=base,
        api_key="sk-ant-test",
        max_retries=0,
        timeout=httpx.Timeout(5.0, read=read_timeout),
    )
    async with client:
        text, events = "", 0
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for event in stream:  # every event the helper yields
                events += 1
                if event.type == "text":
                    text += event.text
        return text, events


@dataclass(frozen=True)
class Family:
    name: str
    dialect: str
    wire: Callable[[], list[bytes]]
    run: Callable[[str, float], Awaitable[tuple[str, int]]]
    rate_limit_body: bytes


OPENAI_429 = (
    b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}'
)

FAMILIES = [
    Family(
        "chat_completions",
        "openai",
        sdk_wire.chat_completions,
        openai_chat,
        OPENAI_429,
    ),
    Family(
        "responses",
        "openai",
        sdk_wire.responses,
        openai_responses,
        OPENAI_429,
    ),
    Family(
        "messages",
        "anthropic",
        sdk_wire.messages,
        anthropic_messages,
        b'{"type":"error","error":{"type":"rate_limit_error","message":"Rate limited"}}',
    ),
]


@pytest.fixture(params=FAMILIES, ids=lambda f: f.name)
def family(request: pytest.FixtureRequest) -> Family:
    return request.param  # type: ignore[no-any-return]


def route(upstream_url: str, family: Family, **extra: object):
    return make_config(upstream_url + "/v1", path="/v1", dialect=family.dialect, **extra)


async def test_a_normal_stream_gives_the_same_text_as_directly(upstream, start_sidecar, family):
    upstream.script = Script(family.wire())
    direct = await family.run(upstream.url, 5.0)
    assert direct[0] == sdk_wire.TEXT
    sc = await start_sidecar(route(upstream.url, family))
    assert await family.run(sc.url, 5.0) == direct


async def test_producer_comments_raise_nothing_and_add_no_chunk(upstream, start_sidecar, family):
    writes = family.wire()
    steps: list[bytes | float] = []
    for w in writes:
        steps += [w, b": ping\n\n", b": another\n", b"\n"]
    upstream.script = Script(steps)
    direct = await family.run(upstream.url, 5.0)
    sc = await start_sidecar(route(upstream.url, family))
    through = await family.run(sc.url, 5.0)
    assert through == direct
    assert through[0] == sdk_wire.TEXT


async def test_a_silence_longer_than_the_read_timeout_is_survived(upstream, start_sidecar, family):
    # 60 s of silence against httpx's 5 s read timeout, scaled down 12x.
    writes = family.wire()
    upstream.script = Script([*writes[:2], READ_TIMEOUT * 2.5, *writes[2:]])
    # Directly the client gives up (the Anthropic SDK lets httpx's own error through).
    timeouts = (openai.APITimeoutError, anthropic.APITimeoutError, httpx.TimeoutException)
    with pytest.raises(timeouts):
        await family.run(upstream.url, READ_TIMEOUT)
    upstream.script = Script(writes)
    expected = await family.run(upstream.url, 5.0)
    upstream.script = Script([*writes[:2], READ_TIMEOUT * 2.5, *writes[2:]])
    sc = await start_sidecar(route(upstream.url, family, heartbeat={"interval": "150ms"}))
    assert await family.run(sc.url, READ_TIMEOUT) == expected


async def test_an_upstream_crash_raises_the_sdks_own_error_with_our_code(
    upstream, start_sidecar, family
):
    writes = family.wire()
    upstream.script = Script([*writes[:3], 0.05, "abort"])
    sc = await start_sidecar(route(upstream.url, family))
    with pytest.raises((openai.APIError, anthropic.APIError)) as info:
        await family.run(sc.url, 5.0)
    assert "upstream_disconnected" in str(info.value)
    body = info.value.body
    assert isinstance(body, dict)
    assert "upstream_disconnected" in str(body)  # the code, machine-readable too


async def test_a_429_before_streaming_raises_rate_limit_error(upstream, start_sidecar, family):
    upstream.script = Script([family.rate_limit_body], status=429, content_type="application/json")
    errors = (openai.RateLimitError, anthropic.RateLimitError)
    with pytest.raises(errors):
        await family.run(upstream.url, 5.0)
    sc = await start_sidecar(route(upstream.url, family))
    with pytest.raises(errors) as info:
        await family.run(sc.url, 5.0)
    assert info.value.status_code == 429


async def test_a_refused_upstream_raises_a_status_error_not_a_stream(start_sidecar, family):
    sc = await start_sidecar(route("http://127.0.0.1:9", family))  # discard port: refused
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as info:
        await family.run(sc.url, 5.0)
    assert info.value.status_code == 502
