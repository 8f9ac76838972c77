"""Example counts for property tests, relative to the loaded hypothesis profile.

tests/conftest.py registers the profiles (`ci`, `dev`, `thorough`, chosen by
HYPOTHESIS_PROFILE). A test whose examples are expensive (a real server per
example) runs a fraction of the profile's count, never fewer than ``floor``.

Why `ci` is derandomized: CI gates one change, so a red run must be that
change's doing and must stay red when re-run or run locally with the same
profile. A random `ci` would let an old bug fail an unrelated change, once.
A seed per commit (`--hypothesis-seed` from the commit id) would repeat per
commit but still pins a failure on whichever commit drew the seed, and it
needs `derandomize` off (Hypothesis ignores a forced seed for a derandomized
test). The cost is that CI explores nothing new; new examples come from
`dev` (random on every local run) and `thorough` (before a release or after
touching a parser), where a failure prints its falsifying example and the
local example database replays it on the next run.
"""

from __future__ import annotations

from hypothesis import settings


def examples(fraction: float = 1.0, floor: int = 10) -> int:
    """The loaded profile's ``max_examples`` times ``fraction``, at least ``floor``."""
    return max(floor, int(settings().max_examples * fraction))
