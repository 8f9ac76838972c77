"""One live stream per session: key extraction and the claim backends."""

from sidecar.sessions.base import Claim, Holder, SessionStore
from sidecar.sessions.keys import SessionKeySource

__all__ = ["Claim", "Holder", "SessionKeySource", "SessionStore"]
