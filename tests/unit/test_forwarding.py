from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.forwarding import TrustedProxies, forwarding_headers, request_id


def test_trusted_proxies_match_by_network() -> None:
    trusted = TrustedProxies.parse(["10.0.0.0/8", "::1"])
    assert trusted.trusts("10.1.2.3")
    assert trusted.trusts("::1")
    assert not trusted.trusts("11.0.0.1")
    assert not trusted.trusts(None)
    assert not trusted.trusts("not-an-ip")
    assert not TrustedProxies().trusts("127.0.0.1")


@pytest.mark.parametrize(
    "good", ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "a" * 128, "b64+/="]
)
def test_plain_request_ids_are_kept(good) -> None:
    assert request_id(good, "fresh") == good


@pytest.mark.parametrize("bad", ["", "a" * 129, "a b", "a\nb", "<x>", "é"])
def test_odd_request_ids_are_replaced(bad) -> None:
    assert request_id(bad, "fresh") == "fresh"
    assert len(request_id(bad)) == 16


def test_a_trusted_network_may_be_written_with_host_bits() -> None:
    # "10.1.2.3/8" (this host's /8, as people write it) trusts the whole 10.0.0.0/8;
    # config validation accepts the same form.
    proxies = TrustedProxies.parse(["10.1.2.3/8", "fd00::1/64"])
    assert proxies.trusts("10.200.0.1")
    assert proxies.trusts("fd00::abcd")
    assert not proxies.trusts("11.0.0.1")


def test_a_trusted_chain_without_a_peer_address_is_passed_on_in_canonical_spelling() -> None:
    # A unix-socket peer has no address to append: the trusted chain goes on
    # as it came, under the spelling the sidecar writes on every path (names
    # are case-insensitive, but the logs and greps of upstream operators are not).
    client = CIMultiDict([("x-forwarded-for", "1.1.1.1"), ("x-forwarded-proto", "https")])
    assert forwarding_headers(
        client, peer=None, scheme="http", local=None, host="api.example", trusted=True
    ) == [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "1.1.1.1"),
        ("X-Forwarded-Host", "api.example"),
    ]
