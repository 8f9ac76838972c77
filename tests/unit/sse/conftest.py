from __future__ import annotations

import pytest

from tests.unit.sse.chunking import CHUNKERS, Chunker


@pytest.fixture(params=list(CHUNKERS))
def chunker(request: pytest.FixtureRequest) -> Chunker:
    """One way of cutting a decoder input into chunks: whole, bytewise or two_chunks."""
    return CHUNKERS[request.param]
