"""CLI tests: --check-config, --version, argument errors, and a port the server cannot have."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sidecar import __version__
from sidecar.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "sidecar.yaml"
DEMO_ROUTES = "/demo -> http://127.0.0.1:8000/demo, /v1/demo-chat -> http://127.0.0.1:8000/v1/chat"
SHIPPED_ROUTES = f"3 route(s): /v1/chat -> http://127.0.0.1:8000/v1/chat, {DEMO_ROUTES}"
GENERIC = "".join(
    f"  {name}: dialect generic: keepalive `event: keepalive`, "
    "errors `event: error` {type, code, message, partial}\n"
    for name in ("chat", "demo-page", "demo-chat")
)

BAD_INTERVAL = """\
routes:
  - name: chat
    path: /v1/chat
    upstream: http://127.0.0.1:8000
    heartbeat: {interval: soon}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No override from the environment the tests run in."""
    for var in list(os.environ):
        if var.startswith("SSE_SIDECAR_"):
            monkeypatch.delenv(var)


def write(tmp_path: Path, text: str, name: str = "sidecar.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_check_config_of_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check-config", str(SHIPPED)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{SHIPPED}: ok ({SHIPPED_ROUTES})\n" + GENERIC
    assert err == ""


def test_check_config_of_a_bad_file_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BAD_INTERVAL)
    assert main(["--check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "sse-sidecar: invalid configuration: routes[0].heartbeat.interval: "
        "expected a duration like 250ms, 15s, 5m or 1h, got 'soon'\n"
    )


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.yaml"
    assert main(["--check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"sse-sidecar: invalid configuration: {path}: cannot read the config file: "
        "No such file or directory\n"
    )


def test_check_config_applies_env_overrides(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSE_SIDECAR_ROUTES__CHAT__UPSTREAM", "http://10.0.0.5:8000/v1/chat")
    monkeypatch.setenv("SSE_SIDECAR_ROUTES__0__PATH", "/v2/chat")
    assert main(["--check-config", str(SHIPPED)]) == 0
    assert capsys.readouterr().out == (
        f"{SHIPPED}: ok (3 route(s): /v2/chat -> http://10.0.0.5:8000/v1/chat, {DEMO_ROUTES})\n"
        + GENERIC
    )


def test_check_config_reports_a_bad_env_override(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSE_SIDECAR_LISTEN__PORT", "70000")
    assert main(["--check-config", str(SHIPPED)]) == 2
    assert capsys.readouterr().err == (
        "sse-sidecar: invalid configuration: listen.port: must be 0..65535, got 70000\n"
    )


def test_check_config_wins_over_sse_sidecar_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSE_SIDECAR_CONFIG", str(write(tmp_path, BAD_INTERVAL)))
    assert main(["--check-config", str(SHIPPED)]) == 0
    assert capsys.readouterr().out == f"{SHIPPED}: ok ({SHIPPED_ROUTES})\n" + GENERIC


def test_bad_config_from_sse_sidecar_config_exits_2_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSE_SIDECAR_CONFIG", str(write(tmp_path, BAD_INTERVAL)))
    assert main([]) == 2
    assert "routes[0].heartbeat.interval: " in capsys.readouterr().err


def test_bad_config_from_config_flag_exits_2_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(write(tmp_path, "routes: []\n"))]) == 2
    assert capsys.readouterr().err == (
        "sse-sidecar: invalid configuration: routes: at least one route is required\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert __version__ == project["version"]
    assert capsys.readouterr().out == f"sse-sidecar {project['version']}\n"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--nope"], "unrecognized arguments: --nope"),
        (["serve"], "unrecognized arguments: serve"),
        (["--check-config"], "argument --check-config: expected one argument"),
    ],
)
def test_argument_errors_exit_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sse-sidecar ")
    assert err.endswith(f"sse-sidecar: error: {complaint}\n")


def test_python_dash_m_check_config() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_SIDECAR_")}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--check-config", "config/sidecar.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"config/sidecar.yaml: ok ({SHIPPED_ROUTES})\n" + GENERIC


def test_tune_gc_freezes_start_up_objects_and_spaces_out_collections() -> None:
    import gc

    from sidecar.cli import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


SDK_ROUTES = """\
routes:
  - name: oai
    path: /v1/chat/completions
    upstream: http://127.0.0.1:8000/v1/chat/completions
  - name: claude
    path: /v1/messages
    upstream: http://127.0.0.1:8001/v1/messages
    dialect: anthropic
  - name: resp
    path: /v1/responses
    upstream: http://127.0.0.1:8000/v1/responses
    dialect: openai
    stream: {retry: 2s}
"""


def test_check_config_explains_dialects_and_warns_on_sdk_paths_with_generic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check-config", str(write(tmp_path, SDK_ROUTES))]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[1].startswith("  oai: dialect generic:")
    assert lines[2].startswith("  claude: dialect anthropic: keepalive `event: ping`")
    assert lines[3].startswith("  resp: dialect openai: keepalive `: keepalive` comment")
    warnings = err.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith("sse-sidecar: warning: routes[0].dialect: the upstream path")
    assert "set dialect: openai" in warnings[0]
    assert warnings[1].startswith("sse-sidecar: warning: routes[2].stream.retry: not sent")


def test_a_bad_dialect_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = SDK_ROUTES.replace("dialect: anthropic", "dialect: claude")
    assert main(["--check-config", str(write(tmp_path, bad))]) == 2
    assert "routes[1].dialect" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_line_naming_the_setting_and_exit_1(
    tmp_path: Path, workers: int
) -> None:
    """The stream port (one process) or the supervisor's admin port: no traceback, no worker."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with taken:
        key = "listen" if workers == 1 else "admin"
        ports = {"listen": 0, "admin": 0, key: port}
        config = write(
            tmp_path,
            f"listen: {{host: 127.0.0.1, port: {ports['listen']}}}\n"
            f"admin: {{host: 127.0.0.1, port: {ports['admin']}}}\n"
            f"workers: {workers}\n"
            "backend: {kind: redis, url: 'redis://127.0.0.1:1/0'}\n"
            "routes: [{name: chat, path: /v1/chat, upstream: 'http://127.0.0.1:9'}]\n",
        )
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (
        f"sse-sidecar: {key}: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
