"""Browser fixtures: a headless Debian Chromium that opens one URL, and is gone afterwards.

No DevTools protocol: a test page reports its result by POSTing it back to a
server the test controls. Chromium runs in its own process group with a
fresh profile and HOME under tmp_path, so teardown can end all of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The flags every run gets. Background networking, component updates and
# sync are what would make a fresh profile download things.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def find_chromium() -> str:
    """The Debian chromium launcher, or skip (fail under CI: it must be there)."""
    path = shutil.which("chromium")
    if path is None and os.access("/usr/bin/chromium", os.X_OK):
        path = "/usr/bin/chromium"
    if path is None:
        message = "chromium not found (scripts/system-deps installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class Browser:
    """One running Chromium process group, its profile and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], root: Path, log_path: Path) -> None:
        self.proc = proc
        self.root = root
        self.log_path = log_path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of Chromium's log (page console messages show up as INFO:CONSOLE)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """End the whole process group: SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._end_strays()

    def _end_strays(self) -> None:
        """Chromium's crashpad handlers start sessions of their own, out of the
        group's reach. They exit with the browser; whatever still names this
        run's directory after a grace second is ended by its pid."""
        deadline = time.monotonic() + 2.0
        while (strays := self._strays()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _strays(self) -> list[int]:
        marker = str(self.root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
        return found


@pytest.fixture
def chromium() -> str:
    return find_chromium()


@pytest.fixture
def launch_browser(chromium: str, tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    """Open a URL in a fresh headless Chromium; teardown ends it and all its processes."""
    launched: list[Browser] = []

    def launch(url: str) -> Browser:
        root = tmp_path / f"chromium-{len(launched)}"
        home = root / "home"
        home.mkdir(parents=True)
        env = {
            **os.environ,
            # Keep ~/.config, ~/.cache, ~/.pki and crash reports out of the real HOME.
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
        }
        log_path = root / "chromium.log"
        args = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={root / 'profile'}",
            # The page's console messages go to the log, for failure messages.
            "--enable-logging=stderr",
            "--v=0",
            url,
        ]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, ended as one
            )
        browser = Browser(proc, root, log_path)
        launched.append(browser)
        return browser

    yield launch
    for browser in launched:
        browser.close()
