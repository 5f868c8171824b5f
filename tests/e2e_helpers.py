"""What the real-browser tests share: `streamlit run` on a free port over a workspace of its own, Debian's
Chromium driven by Playwright, screenshots into test-artifacts/e2e/, and waiting for Streamlit's reruns."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import expect

from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "test-artifacts" / "e2e"
# Sized for a busy 2-core machine: a rerun that takes a second idle can take ten with the other core taken.
RERUN_TIMEOUT_MS = 120_000
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
CHARTS_DRAWN = "() => [...document.querySelectorAll('[data-testid=\"stVegaLiteChart\"]')]" \
               ".filter(c => c.offsetParent).every(c => c.querySelector('canvas, svg'))"
expect.set_options(timeout=RERUN_TIMEOUT_MS)


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
    deadline = time.time() + RERUN_TIMEOUT_MS / 1000
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
    """A tab whose every wait (clicks, locators, expect) allows a busy machine's rerun."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
    page.set_default_timeout(RERUN_TIMEOUT_MS)
    return page


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
    """A full-page screenshot once every chart on the page has drawn."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_function(CHARTS_DRAWN, timeout=RERUN_TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def settle(page) -> None:
    """Wait until Streamlit has finished the rerun the last action caused: the app marks its script state on
    stApp (a click sets it to rerunRequested before it returns; Streamlit's own e2e helpers wait on it too)."""
    page.locator(IDLE).wait_for(timeout=RERUN_TIMEOUT_MS)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=RERUN_TIMEOUT_MS)


def nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
    settle(page)


class IdentityProxy:
    """What a lab puts in front of a shared server: a reverse proxy that signs people in and tells the app who
    they are in a header (FTLAB_TRUSTED_HEADER). One port per person here; the header a client sends itself is
    dropped, as a real proxy must. Browsers cannot add a header to a WebSocket handshake themselves (Chromium
    before 151, microsoft/playwright#28948), so the tests need a proxy as much as a lab does."""

    def __init__(self, upstream_port: int, header: str, users: list[str]):
        import asyncio

        self.upstream, self.header = upstream_port, header
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        self.servers: list = []
        started = threading.Event()

        async def serve() -> None:
            for user in users:
                server = await asyncio.start_server(lambda r, w, u=user: self._relay(r, w, u), "127.0.0.1", 0)
                self.servers.append(server)
                self.ports[user] = server.sockets[0].getsockname()[1]
            started.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(serve()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        started.wait(10)

    def url(self, user: str) -> str:
        return f"http://127.0.0.1:{self.ports[user]}"

    async def _relay(self, reader, writer, user: str) -> None:
        import asyncio

        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst, first: bool) -> None:
            try:
                while True:
                    if first:  # each request head on this connection gets the header (keep-alive too)
                        head = await src.readuntil(b"\r\n\r\n")
                        lines = [ln for ln in head.split(b"\r\n")
                                 if not ln.lower().startswith(self.header.lower().encode() + b":")]
                        lines.insert(1, f"{self.header}: {user}".encode())
                        dst.write(b"\r\n".join(lines))
                        length = next((int(ln.split(b":", 1)[1]) for ln in lines
                                       if ln.lower().startswith(b"content-length:")), 0)
                        while length:  # the body, streamed
                            chunk = await src.read(min(length, 1 << 20))
                            if not chunk:
                                raise ConnectionError
                            dst.write(chunk)
                            length -= len(chunk)
                            await dst.drain()
                        if b"upgrade: websocket" in head.lower() or b"chunked" in head.lower():
                            first = False  # the rest is frames (or a chunked body): relayed as bytes
                    else:
                        data = await src.read(1 << 16)
                        if not data:
                            break
                        dst.write(data)
                    await dst.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
                src_writer = writer if dst is up_writer else up_writer
                src_writer.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def close(self) -> None:
        """Every connection closed and every relay ended before the loop stops (no transport outlives it)."""
        import asyncio

        async def shutdown() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
