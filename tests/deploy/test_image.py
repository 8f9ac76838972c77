"""The container image, built from the Dockerfile and run, without a Docker engine.

scripts/build-image builds it with podman (chroot isolation) on a Debian base
made by debootstrap. podman run cannot set rlimits on these machines, so the
image's filesystem is exported and its entrypoint run under chroot as the
image's user (10001), with the image's environment: the baked config checks,
a stream through the image's sidecar to the image's example producer ends with
its terminal event, /healthz answers, and SIGTERM drains and exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/sse-sidecar:test"
pytestmark = pytest.mark.image


def run(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


class Image:
    def __init__(self, rootfs: Path, env: dict[str, str]) -> None:
        self.rootfs = rootfs
        self.env = env

    def command(self, *args: str) -> list[str]:
        """``args`` run inside the image's filesystem as its user, uid 10001."""
        return ["chroot", "--userspec=10001:10001", str(self.rootfs), *args]

    def popen(self, *args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                self.command(*args), env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT
            )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    assert os.geteuid() == 0, "chroot and rootful podman need root"
    for tool in ("podman", "debootstrap", "chroot"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/system-deps"
    run(str(ROOT / "scripts" / "build-image"), TAG, timeout=900)
    inspected = json.loads(run("podman", "image", "inspect", TAG))[0]["Config"]
    assert inspected["User"] == "10001:10001"
    assert inspected["Entrypoint"] == ["sse-sidecar"]
    assert inspected["StopSignal"] == "SIGTERM"
    env = dict(var.split("=", 1) for var in inspected["Env"])
    rootfs = tmp_path_factory.mktemp("image") / "rootfs"
    rootfs.mkdir()
    container = run("podman", "create", TAG).strip()
    try:
        archive = rootfs.parent / "image.tar"
        run("podman", "export", "-o", str(archive), container, timeout=300)
    finally:
        run("podman", "rm", container)
    with tarfile.open(archive) as tar:
        tar.extractall(rootfs, filter="fully_trusted")
    archive.unlink()
    yield Image(rootfs, env)
    shutil.rmtree(rootfs.parent, ignore_errors=True)


def test_baked_config_checks(image: Image) -> None:
    config = image.env["SSE_SIDECAR_CONFIG"]
    assert (image.rootfs / config.lstrip("/")).is_file()
    result = subprocess.run(
        image.command("sse-sidecar", "--check-config", config),
        env=image.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runtime_user_cannot_write_the_image(image: Image) -> None:
    result = subprocess.run(
        image.command("python", "-c", "open('/opt/venv/x', 'w')"),
        env=image.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "PermissionError" in result.stderr


def wait_http(url: str, deadline: float) -> bytes:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_stream_healthz_and_sigterm_drain(image: Image, tmp_path: Path) -> None:
    producer_port, http_port, admin_port = free_port(), free_port(), free_port()
    producer = image.popen(
        "sse-sidecar", "example-producer", "--host", "127.0.0.1", "--port", str(producer_port),
        env={}, log=tmp_path / "producer.log",
    )  # fmt: skip
    # Loopback only in tests, and ports of our own: the image's defaults
    # (0.0.0.0, 8080/9090) are overridden the documented way, by environment.
    sidecar = image.popen(
        "sse-sidecar",
        env={
            "SSE_SIDECAR_LISTEN__HOST": "127.0.0.1",
            "SSE_SIDECAR_LISTEN__PORT": str(http_port),
            "SSE_SIDECAR_ADMIN__HOST": "127.0.0.1",
            "SSE_SIDECAR_ADMIN__PORT": str(admin_port),
            "SSE_SIDECAR_ROUTES__CHAT__UPSTREAM": f"http://127.0.0.1:{producer_port}/v1/chat",
            "SSE_SIDECAR_DRAIN_TIMEOUT": "1s",
        },
        log=tmp_path / "sidecar.log",
    )
    try:
        deadline = time.monotonic() + 60
        wait_http(f"http://127.0.0.1:{producer_port}/healthz", deadline)
        assert wait_http(f"http://127.0.0.1:{admin_port}/healthz", deadline)

        url = f"http://127.0.0.1:{http_port}/v1/chat?silence=0"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            body = response.read().decode()
        assert "event: token" in body
        assert body.rstrip().endswith("data: [DONE]"), body[-200:]
        assert "event: done" in body

        # A stream still running at SIGTERM gets error/shutdown after drain_timeout.
        hanging = urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/v1/chat?mode=hang", timeout=30
        )
        assert hanging.readline().startswith(b"retry:")
        sidecar.send_signal(signal.SIGTERM)
        tail = hanging.read().decode()
        hanging.close()
        assert "event: error" in tail
        assert "shutdown" in tail
        assert sidecar.wait(timeout=30) == 0, (tmp_path / "sidecar.log").read_text()
    finally:
        for process in (sidecar, producer):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    output = (tmp_path / "sidecar.log").read_text()
    assert "Traceback" not in output, output
