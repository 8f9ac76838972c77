"""In-process session claims: exact within one process, nothing shared beyond it.

Claims are taken without an ``await`` between the check and the set, so two
requests for one key can never both win: asyncio runs one at a time.
"""

from __future__ import annotations

import asyncio
import itertools

from sidecar.errors import SessionConflict, SessionForbidden
from sidecar.sessions.base import REPLACE_WAIT, Claim, Holder, Policy, may_end


class MemorySessionStore:
    kind = "memory"

    def __init__(self, replace_wait: float = REPLACE_WAIT) -> None:
        self._held: dict[tuple[str, str], Claim] = {}
        self._tokens = itertools.count(1)
        self._replace_wait = replace_wait

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def healthy(self) -> bool:
        return True

    def owner(self, route: str, key: str) -> Claim | None:
        return self._held.get((route, key))

    def __len__(self) -> int:
        return len(self._held)

    async def claim(
        self, route: str, key: str, policy: Policy, holder: Holder, binding: str = ""
    ) -> Claim:
        slot = (route, key)
        old = self._held.get(slot)
        if old is not None and policy == "reject":
            raise SessionConflict(f"session already has a live stream on route {route}")
        if old is not None and not may_end(old.binding, binding):
            raise SessionForbidden(f"the live stream on route {route} has other credentials")
        claim = Claim(route, key, next(self._tokens), holder, binding=binding)
        # The newcomer owns the session from now on, so a third request
        # replaces it, not the stream that is on its way out.
        self._held[slot] = claim
        if old is not None:
            claim.replaced = True
            old.holder.stop("replaced")
            try:
                async with asyncio.timeout(self._replace_wait):
                    await old.released.wait()
            except TimeoutError:
                pass  # it is told to stop; the session is ours either way
        return claim

    async def stop(self, route: str, key: str, binding: str = "") -> bool:
        claim = self._held.get((route, key))
        if claim is None:
            return False
        if not may_end(claim.binding, binding):
            raise SessionForbidden(f"the live stream on route {route} has other credentials")
        claim.holder.stop("stopped")
        return True

    async def release(self, claim: Claim) -> None:
        slot = (claim.route, claim.key)
        if self._held.get(slot) is claim:
            del self._held[slot]
        claim.released.set()
