"""Cross-origin browsers on a route (pure; Fetch standard, "CORS protocol").

Strategy: :func:`decide` looks at a request's ``Origin`` once and returns a
:class:`Decision`: which ``Access-Control-*`` headers every response to it
carries (streams, passthroughs and refusals alike, so a page can read our
JSON errors), or that the origin is refused. :func:`preflight` answers an
``OPTIONS`` preflight without asking the upstream. A request without
``Origin``, or from the sidecar's own origin, is no cross-origin request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sidecar.errors import ConfigError
from sidecar.typedconf import Duration

#: Request headers a page may always send (Fetch's CORS-safelisted names), and
#: the one EventSource sends on a reconnect.
_ALWAYS = frozenset(
    {"accept", "accept-language", "content-language", "content-type", "last-event-id"}
)

#: Response headers a page may read besides the safelisted ones.
_EXPOSE = "X-Request-ID, Retry-After"

_VARY = "Origin"


@dataclass(frozen=True)
class CorsPolicy:
    """A route's ``cors:`` block."""

    #: Origins allowed, exactly as browsers send them (``https://app.example``), or ``"*"``.
    origins: tuple[str, ...] = ()
    #: Allow cookies and HTTP auth (``withCredentials``, ``credentials: "include"``).
    credentials: bool = False
    #: Request headers allowed besides the safelisted ones and the session header.
    headers: tuple[str, ...] = ()
    #: How long a browser may cache a preflight's answer.
    max_age: Duration = 600.0


def validate_cors(policy: CorsPolicy, key: str) -> None:
    if not policy.origins:
        raise ConfigError(f"{key}.origins: list at least one origin (or '*')")
    for i, origin in enumerate(policy.origins):
        if origin == "*":
            if policy.credentials:
                raise ConfigError(
                    f"{key}.origins[{i}]: '*' cannot be combined with credentials: true "
                    "(any site could use a user's cookies); list the origins"
                )
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ConfigError(
                f"{key}.origins[{i}]: expected scheme://host[:port] or '*', got {origin!r}"
            )


@dataclass(frozen=True)
class Decision:
    """What a request's origin gets: headers for every response, or a refusal."""

    headers: Mapping[str, str]
    allowed: bool = True


#: No cross-origin request, or a route without ``cors:``: nothing added.
SAME_ORIGIN = Decision({})


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` names the host the request was sent to (the port counts).

    The scheme is not compared: behind a TLS-terminating proxy the sidecar
    sees http while the page is https.
    """
    if host is None:
        return False
    netloc = urlsplit(origin).netloc
    return bool(netloc) and netloc.lower() == host.lower()


class Cors:
    """A route's policy, with its lookups prepared once."""

    def __init__(self, policy: CorsPolicy, session_header: str | None, methods: Sequence[str]):
        self.policy = policy
        self._any = "*" in policy.origins
        self._origins = frozenset(o.lower() for o in policy.origins)
        allowed = {h.lower() for h in policy.headers} | _ALWAYS
        if session_header:
            allowed.add(session_header.lower())
        self._headers = frozenset(allowed)
        self._methods = tuple(methods)

    def allows(self, origin: str) -> bool:
        return self._any or origin.lower() in self._origins

    def decide(self, origin: str | None, host: str | None) -> Decision:
        if origin is None or same_origin(origin, host):
            return SAME_ORIGIN
        if not self.allows(origin):
            return Decision({"Vary": _VARY}, allowed=False)
        return Decision(self._response_headers(origin))

    def _response_headers(self, origin: str) -> dict[str, str]:
        out = {
            "Access-Control-Allow-Origin": "*"
            if self._any and not self.policy.credentials
            else origin,
            "Vary": _VARY,
            "Access-Control-Expose-Headers": _EXPOSE,
        }
        if self.policy.credentials:
            out["Access-Control-Allow-Credentials"] = "true"
        return out

    def preflight(
        self, origin: str, method: str, request_headers: str
    ) -> tuple[bool, dict[str, str]]:
        """(allowed, headers) for ``OPTIONS`` with ``Access-Control-Request-Method``."""
        vary = {"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
        asked = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
        if (
            not self.allows(origin)
            or method not in self._methods
            or any(h not in self._headers for h in asked)
        ):
            return False, vary
        out = self._response_headers(origin)
        out.update(vary)
        out["Access-Control-Allow-Methods"] = ", ".join(self._methods)
        if asked:
            out["Access-Control-Allow-Headers"] = ", ".join(asked)
        out["Access-Control-Max-Age"] = str(round(self.policy.max_age))
        return True, out


def without_cors(headers: Mapping[str, str]) -> list[str]:
    """The names of the ``Access-Control-*`` headers in ``headers``."""
    return [name for name in headers if name.lower().startswith("access-control-")]
