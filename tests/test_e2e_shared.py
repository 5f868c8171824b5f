"""A shared server in real Chromium: a fresh server behind a signing-in proxy (one person per port), two people
who never see each other's data, a shared link that opens nothing for the wrong person, and the guard on a
server that listens on every interface with nobody signed in."""
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from conftest import ROOT, make_dataset
from e2e_helpers import RERUN_TIMEOUT_MS, IdentityProxy, chromium, free_port, new_page, settle, shot, start_server, stop_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def test_two_people_behind_the_proxy_never_see_each_others_data(browser, tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_TRUSTED_HEADER", "X-Forwarded-User")
    home, port = tmp_path / "home", free_port()
    home.mkdir()
    proc = start_server(home, port)  # a fresh server: no workspace folder yet
    proxy = IdentityProxy(port, "X-Forwarded-User", ["alice", "bob"])
    alice, bob = new_page(browser), new_page(browser)
    try:
        alice.goto(f"{proxy.url('alice')}/data")
        alice.get_by_role("heading", name="Data", level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
        data = make_dataset(tmp_path / "upload" / "slides", {"mitosis": 6, "stroma": 6})
        alice.locator('[data-testid="stFileUploader"] input[type=file]').first.set_input_files(str(data))
        alice.get_by_role("button", name="Use this folder").click()
        alice.get_by_text("Thumbnails").wait_for(timeout=RERUN_TIMEOUT_MS)
        settle(alice)
        expect(alice.locator('[data-testid="stSidebar"]')).to_contain_text("Signed in as alice")
        assert "project=alice%2Fmain" in alice.url and "data=" in alice.url
        link = alice.url.replace(proxy.url("alice"), proxy.url("bob"))  # alice sends bob her link
        shot(alice, "shared-alice")

        bob.goto(link)
        bob.get_by_role("heading", name="Data", level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
        settle(bob)
        body = bob.locator("body").inner_text()
        assert "There is no project 'alice/main' that you can open" in body
        assert "mitosis" not in body and "stroma" not in body and "Signed in as bob" in body
        assert "project=bob%2Fmain" in bob.url and "data=" not in bob.url
        shot(bob, "shared-bob")
        assert (home / "workspace" / "projects" / "alice" / "main" / "datasets").is_dir()
        assert not (home / "workspace" / "projects" / "bob" / "main" / "datasets").exists()
    finally:
        for page in (alice, bob):
            page.context.close()
        proxy.close()
        stop_server(proc)


def serve(home, port, *extra):
    log = open(home / "server.log", "ab")
    env = os.environ | {"FTLAB_HOME": str(home / "workspace")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "0.0.0.0",
                             "--server.port", str(port), *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError((home / "server.log").read_text()[-2000:])


def test_every_interface_without_sign_in_needs_the_flag_and_warns(browser, tmp_path, monkeypatch):
    monkeypatch.delenv("FTLAB_TRUSTED_HEADER", raising=False)
    page = new_page(browser)
    try:
        for extra, refused in (((), True), (("--", "--without-sign-in"), False)):
            home, port = tmp_path / f"home-{refused}", free_port()
            home.mkdir()
            proc = serve(home, port, *extra)
            try:
                page.goto(f"http://127.0.0.1:{port}/runs")
                if refused:
                    page.get_by_text("listens on 0.0.0.0 with no sign-in").wait_for(timeout=RERUN_TIMEOUT_MS)
                    settle(page)
                    expect(page.get_by_role("heading", name="Runs", level=1)).to_have_count(0)
                else:
                    page.get_by_role("heading", name="Runs", level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
            finally:
                stop_server(proc)
            log = (home / "server.log").read_text()
            assert ("listens on 0.0.0.0 with no sign-in" if refused else "WARNING: listening on 0.0.0.0") in log
    finally:
        page.context.close()


def test_a_password_sign_in_survives_a_reload_until_sign_out(browser, tmp_path, monkeypatch):
    from core.accounts import users

    monkeypatch.delenv("FTLAB_TRUSTED_HEADER", raising=False)
    home, port = tmp_path / "home", free_port()
    users.put(home / "workspace", "kim", "kim-password-1")
    proc = start_server(home, port)
    page = new_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{port}/runs")
        page.get_by_label("User name", exact=True).fill("kim")
        page.get_by_label("Password", exact=True).fill("kim-password-1")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Runs", level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
        settle(page)
        page.reload()  # a new session: the signed cookie signs it in
        page.get_by_role("heading", name="Runs", level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
        expect(page.locator('[data-testid="stSidebar"]')).to_contain_text("Signed in as kim")
        page.get_by_role("button", name="Sign out").click()
        page.get_by_label("User name", exact=True).wait_for(timeout=RERUN_TIMEOUT_MS)
        settle(page)
        page.reload()
        page.get_by_label("User name", exact=True).wait_for(timeout=RERUN_TIMEOUT_MS)
        expect(page.get_by_role("heading", name="Runs", level=1)).to_have_count(0)
    finally:
        page.context.close()
        stop_server(proc)
