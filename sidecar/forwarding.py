"""What the upstream is told about the client: forwarding headers and the request id (pure).

The ``X-Forwarded-*`` and ``Forwarded`` headers a client sends are its own
claims; only a peer in ``trusted_proxies`` (the nginx in front) may make
them. Everyone else's are dropped and set from the connection: the peer's
address, the scheme and the address the connection came in on. A client's
``X-Request-ID`` is kept only when it is short and plain, since it is
echoed, forwarded and logged.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

#: Headers that name the client side of a proxy chain (RFC 7239 and the de facto ones).
FORWARDING = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded",
              "X-Real-IP", "X-Forwarded-Port")  # fmt: skip

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=@-]{1,128}")

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def request_id(given: str | None, fresh: str | None = None) -> str:
    """The client's id if it is 1..128 plain characters, else ``fresh`` (or a new one)."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return fresh or secrets.token_hex(8)


@dataclass(frozen=True)
class TrustedProxies:
    """The peers whose forwarding headers are believed."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, cidrs: Sequence[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def trusts(self, peer: str | None) -> bool:
        if peer is None or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False  # a unix socket or a name: nothing to match
        return any(address in net for net in self.networks)


def forwarding_headers(
    client: Headers, *, peer: str | None, scheme: str, local: str | None, host: str | None,
    trusted: bool,
) -> list[tuple[str, str]]:  # fmt: skip
    """The forwarding headers to send upstream (the client's are already dropped).

    ``trusted``: the peer is a trusted proxy, so its headers are kept and the
    peer appended to ``X-Forwarded-For``; otherwise the chain starts here and
    ``X-Forwarded-Host`` is the address the connection came in on, not the
    client's ``Host``.
    """
    out: list[tuple[str, str]] = []
    if trusted:
        for name in FORWARDING:
            if name == "X-Forwarded-For":
                continue
            out.extend((name, value) for value in client.getall(name, ()))
    prior = ", ".join(client.getall("X-Forwarded-For", ())) if trusted else ""
    if peer:
        out.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    elif prior:
        out.append(("X-Forwarded-For", prior))
    if not (trusted and "X-Forwarded-Proto" in client):
        out.append(("X-Forwarded-Proto", scheme))
    forwarded_host = host if trusted else local
    if forwarded_host and not (trusted and "X-Forwarded-Host" in client):
        out.append(("X-Forwarded-Host", forwarded_host))
    return out
