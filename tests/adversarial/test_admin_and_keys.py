"""The admin port's bearer check, and keys and ids that try to get into SSE fields."""

from __future__ import annotations

import json

import pytest

from tests.adversarial.conftest import get, raw_request
from tests.conftest import make_config

pytestmark = pytest.mark.adversarial


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong",
        "bearer s3cret",
        "Bearer  s3cret",
        "Basic czNjcmV0",
        "Bearer",
        "s3cret",
        "Bearer s3cr\xe9t",  # latin-1 bytes, not UTF-8
        "Bearer \xff\xfe\xfd",
    ],
)
async def test_admin_refuses_every_wrong_authorization_with_401(start_sidecar, authorization):
    sc = await start_sidecar(
        make_config("http://127.0.0.1:9", top={"admin": {"host": "127.0.0.1", "port": 0,
                                                          "token": "s3cret"}})
    )  # fmt: skip
    extra = [f"Authorization: {authorization}"] if authorization is not None else []
    resp = await raw_request(sc.sidecar.admin_port, get("/metrics", *extra))
    assert resp.status == 401, resp.raw[:200]
    assert json.loads(resp.body)["error"]["code"] == "unauthorized"


async def test_admin_takes_the_right_token(start_sidecar):
    sc = await start_sidecar(
        make_config("http://127.0.0.1:9", top={"admin": {"host": "127.0.0.1", "port": 0,
                                                          "token": "s3cret"}})
    )  # fmt: skip
    resp = await raw_request(sc.sidecar.admin_port, get("/metrics", "Authorization: Bearer s3cret"))
    assert resp.status == 200


@pytest.mark.parametrize("key", ["a b", "a\tb", "x" * 129, "é", "a;b", "a%0Ab", "<script>"])
async def test_session_keys_outside_the_pattern_are_400(start_sidecar, key):
    sc = await start_sidecar(make_config("http://127.0.0.1:9"))
    resp = await raw_request(
        sc.sidecar.port, get("/s", f"X-Session-Key: {key}".encode().decode("latin-1"))
    )
    assert resp.status == 400
    assert json.loads(resp.body)["error"]["code"] == "bad_session_key"
