"""What the real-browser tests share: `streamlit run` on a free port over a workspace of its own, Debian's
Chromium driven by Playwright, screenshots into test-artifacts/e2e/, and waiting for Streamlit's reruns."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "test-artifacts" / "e2e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int, log: str = "server.log") -> subprocess.Popen:
    """The app as a user gets it from `make run`, over home/workspace; returns once it answers its health check."""
    env = os.environ | {"FTLAB_HOME": str(home / "workspace"), "FTLAB_DATA_ROOT": str(home / "server-data")}
    with open(home / log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1",
                                 "--server.port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                stop_server(proc)
                raise RuntimeError(f"streamlit did not start: {(home / log).read_text()[-2000:]}")
            time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    """What Ctrl-C or a service manager does: SIGTERM, then wait for the process to end."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@contextmanager
def chromium() -> Iterator:
    """Debian's Chromium (Playwright's own browser download is not reachable from every machine)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Chromium is missing: `make test` installs it (apt-get install -y chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser):
    return browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for a whole test module: (its url, its home folder)."""
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    proc = start_server(home, port)
    yield f"http://127.0.0.1:{port}", home
    stop_server(proc)


@pytest.fixture(scope="module")
def page(server):
    with chromium() as browser:
        page = new_page(browser)
        yield page
        shot(page, "last")  # what the browser showed when the test ended, passed or failed


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(400)  # let charts finish drawing
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def settle(page) -> None:
    """Wait until Streamlit has finished the rerun the last action caused."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=60_000)


def nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=30_000)
    settle(page)
