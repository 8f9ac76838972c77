"""What the example gateway answers (sidecar/examples/gateway_text.py): pure, for tests."""

from __future__ import annotations

import itertools

from sidecar.examples.gateway_text import accepted, canonical_key, cumulative_texts, final_text


def test_the_deltas_grow_to_the_final_text_and_depend_on_the_message_alone() -> None:
    texts = cumulative_texts("hello there")
    assert texts == cumulative_texts("hello there")
    assert texts[-1] == final_text("hello there")
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert "hello there" in final_text("[slow] hello   there")  # markers are no topic


def test_a_reset_run_drafts_a_text_the_answer_does_not_start_with() -> None:
    texts = cumulative_texts("[reset] tell me")
    answer = final_text("[reset] tell me")
    assert texts[-1] == answer
    assert not answer.startswith(texts[0])
    assert any(not b.startswith(a) for a, b in itertools.pairwise(texts))


def test_session_keys_take_openclaws_form() -> None:
    assert canonical_key("Main") == "agent:main:main"
    assert canonical_key("agent:Ops:X") == "agent:ops:x"
    assert canonical_key("x", agent="bot") == "agent:bot:x"
    assert accepted("r1", "run-1", "agent:main:main")["payload"] == {
        "runId": "run-1",
        "status": "accepted",
        "sessionKey": "agent:main:main",
    }
