"""The credential fingerprint a resumable run is bound to (sidecar/sessions/binding.py)."""

from __future__ import annotations

from multidict import CIMultiDict

from sidecar.sessions.binding import CredentialBinding, same_credentials

DEFAULT = CredentialBinding(["header:Authorization", "header:Cookie"])


def fp(binding=DEFAULT, route="chat", key="conv-1", headers=None, cookies=None) -> str:
    return binding.fingerprint(route, key, CIMultiDict(headers or {}), cookies or {})


def test_same_credentials_same_fingerprint():
    alice = {"Authorization": "Bearer alice-secret", "Cookie": "sid=1"}
    assert fp(headers=alice) == fp(headers=dict(alice))
    assert len(fp(headers=alice)) == 64


def test_other_credentials_other_fingerprint():
    alice = fp(headers={"Authorization": "Bearer alice-secret"})
    assert alice != fp(headers={"Authorization": "Bearer mallory"})
    assert alice != fp()  # none at all
    assert alice != fp(headers={"Authorization": "Bearer alice-secret", "Cookie": "x=1"})


def test_absent_is_not_empty():
    assert fp() != fp(headers={"Authorization": ""})
    # Values cannot slide between sources: "a" + "" differs from "" + "a".
    assert fp(headers={"Authorization": "a", "Cookie": ""}) != fp(
        headers={"Authorization": "", "Cookie": "a"}
    )


def test_header_names_are_case_insensitive():
    binding = CredentialBinding(["header:X-API-Key"])
    assert fp(binding, headers={"x-api-key": "k"}) == fp(binding, headers={"X-Api-Key": "k"})
    assert fp(binding, headers={"X-API-Key": "k"}) != fp(binding, headers={"X-API-Key": "K"})


def test_cookie_source_reads_only_that_cookie():
    binding = CredentialBinding(["cookie:session"])
    base = fp(binding, cookies={"session": "s1", "theme": "dark"})
    assert base == fp(binding, cookies={"session": "s1", "theme": "light"})
    assert base != fp(binding, cookies={"session": "s2", "theme": "dark"})
    assert base != fp(binding, cookies={"Session": "s1"})  # cookie names are case-sensitive
    # The header of the same name is not the cookie.
    assert fp(binding, headers={"session": "s1"}) != base


def test_route_and_key_are_part_of_the_fingerprint():
    auth = {"Authorization": "Bearer a"}
    assert fp(headers=auth) != fp(route="other", headers=auth)
    assert fp(headers=auth) != fp(key="conv-2", headers=auth)
    # No separator ambiguity between route and key.
    assert fp(route="ab", key="c", headers=auth) != fp(route="a", key="bc", headers=auth)


def test_no_sources_binds_nothing():
    none = CredentialBinding([])
    assert not none.enabled
    assert DEFAULT.enabled
    assert fp(none, headers={"Authorization": "x"}) == fp(none) == ""


def test_any_header_text_gives_a_fingerprint():
    # A header aiohttp decoded with surrogates must not raise.
    assert len(fp(headers={"Authorization": "Bearer \udcff\ud800"})) == 64


def test_same_credentials_compares_exactly():
    assert same_credentials("abc", "abc")
    assert not same_credentials("abc", "abd")
    assert not same_credentials("abc", "")
    assert same_credentials("", "")


def test_the_fingerprint_is_a_stable_format():
    # A run's fingerprint is stored in its replay log and compared by other
    # workers and, after a rolling deploy, by the next version: its
    # construction is a format. Changing it means a new "v1" tag and vector.
    binding = CredentialBinding(["header:Authorization", "cookie:sid"])
    given = fp(binding, headers={"Authorization": "Bearer t"}, cookies={"sid": "s1"})
    assert given == "fdc275423c7e7962ad32e01f002d2c731273182055c495783803968fd40d5ae9"
    assert fp(binding) == "687c08cca6710459c170943b95b58e90d13f5babcfcd266a3b570a7232a1f836"


def test_the_configured_case_of_a_header_name_does_not_matter():
    # Two workers (or two deploys) that spell the header differently in
    # resume.bind still agree on the fingerprint.
    headers = {"X-API-Key": "k"}
    assert fp(CredentialBinding(["header:X-API-Key"]), headers=headers) == fp(
        CredentialBinding(["header:x-api-key"]), headers=headers
    )


def test_the_configured_case_of_a_cookie_name_is_kept():
    # Cookie names are case-sensitive, so "Sid" and "sid" are two sources,
    # even when the request happens to carry both with one value.
    cookies = {"Sid": "1", "sid": "1"}
    assert fp(CredentialBinding(["cookie:Sid"]), cookies=cookies) != fp(
        CredentialBinding(["cookie:sid"]), cookies=cookies
    )


class Headers:
    """A request whose cookie jar fails the test when parsed (it stays cached for life)."""

    def __init__(self, headers: dict[str, str], cookies: dict[str, str] | None = None) -> None:
        self.headers = CIMultiDict(headers)
        self._cookies = cookies

    @property
    def cookies(self) -> dict[str, str]:
        assert self._cookies is not None, "cookies parsed, though no source is a cookie"
        return self._cookies


def test_a_request_is_fingerprinted_as_its_parts_and_its_cookies_only_parsed_if_bound() -> None:
    alice = {"Authorization": "Bearer alice-secret", "Cookie": "sid=1"}
    assert DEFAULT.of_request("chat", "conv-1", Headers(alice)) == fp(headers=alice)
    by_cookie = CredentialBinding(["cookie:sid"])
    got = by_cookie.of_request("chat", "conv-1", Headers(alice, {"sid": "1"}))
    assert got == fp(by_cookie, headers=alice, cookies={"sid": "1"})
