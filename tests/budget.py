"""Example counts for property tests, relative to the loaded hypothesis profile.

tests/conftest.py registers the profiles (`ci`, `dev`, `thorough`, chosen by
HYPOTHESIS_PROFILE). A test whose examples are expensive (a real server per
example) runs a fraction of the profile's count, never fewer than ``floor``.
"""

from __future__ import annotations

from hypothesis import settings


def examples(fraction: float = 1.0, floor: int = 10) -> int:
    """The loaded profile's ``max_examples`` times ``fraction``, at least ``floor``."""
    return max(floor, int(settings().max_examples * fraction))
