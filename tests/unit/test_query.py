"""One query parameter, read from the raw query string (sidecar/query.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from sidecar.query import query_param


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", None),
        ("a=1", None),
        ("s=k1", "k1"),
        ("s=k1&s=k2", "k1"),  # the first, as MultiDict.get
        ("s=", ""),
        ("s", ""),
        ("a=1&s=a%20b+c", "a b c"),
        ("%73=k1", "k1"),  # the name is decoded too
        ("s=a%26b&x=1", "a&b"),  # an encoded & is not a separator
        ("s=%E2%9C%93", "\u2713"),
    ],
)
def test_the_first_value_decoded(query: str, expected: str | None) -> None:
    assert query_param(query, "s") == expected


_text = st.text(alphabet=st.sampled_from("sa=&+%20%2F%zé✓;"), max_size=24)


@given(_text)
def test_as_yarls_parsed_query(raw: str) -> None:
    url = URL("http://h/p?" + raw, encoded=True)
    assert query_param(url.raw_query_string, "s") == url.query.get("s")
