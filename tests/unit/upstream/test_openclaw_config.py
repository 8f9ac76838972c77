"""The ``websocket: {profile: openclaw}`` block: defaults, overrides, the token's sources."""

from __future__ import annotations

import pytest

from sidecar.config import from_mapping
from sidecar.errors import ConfigError, UpstreamUnreachable
from sidecar.upstream.gateway import read_token


def config(websocket: dict[str, object], environ: dict[str, str] | None = None):
    route = {"name": "agent", "path": "/v1/agent", "upstream": "ws://127.0.0.1:1"}
    return from_mapping({"routes": [{**route, "websocket": websocket}]}, environ or {})


def test_the_five_line_route_needs_nothing_else():
    ws = config({"profile": "openclaw", "token": "s3cret"}).routes[0].websocket
    assert ws is not None
    assert ws.profile == "openclaw"
    assert ws.handshake.protocol == 4
    assert "operator.write" in ws.handshake.scopes
    assert "s3cret" not in repr(ws)  # never in a log line that prints the config


def test_the_token_from_the_environment_or_a_file(tmp_path):
    env = {"SSE_SIDECAR_ROUTES__AGENT__WEBSOCKET__TOKEN": "from-env"}
    ws = config({"profile": "openclaw"}, env).routes[0].websocket
    assert ws is not None
    assert read_token(ws) == "from-env"
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    ws = config({"profile": "openclaw", "token_file": str(secret)}).routes[0].websocket
    assert ws is not None
    assert read_token(ws) == "from-file"
    secret.unlink()
    with pytest.raises(UpstreamUnreachable, match="token_file"):
        read_token(ws)


def test_handshake_fields_are_overridable_and_checked():
    ws = config({"profile": "openclaw", "handshake": {"client_id": "cli", "caps": ["x"]}})
    assert ws.routes[0].websocket is not None
    assert ws.routes[0].websocket.handshake.client_id == "cli"
    with pytest.raises(ConfigError, match=r"websocket\.handshake\.scopes"):
        config({"profile": "openclaw", "handshake": {"scopes": ["operator.read"]}})
    with pytest.raises(ConfigError, match=r"websocket\.profile"):
        config({"profile": "openclawd"})
