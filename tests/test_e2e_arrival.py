"""Real-browser tests of how people arrive: a bookmark as the first page a fresh server serves, a shared link as
the first page of a new session, a server restart under an open Train tab (the training worker outlives it and the new server picks it up), and a
zip upload of a few hundred MB (the server's memory must not hold several copies of it).

Screenshots land in test-artifacts/e2e/arrival-*.png.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect

from conftest import make_dataset
from e2e_helpers import RERUN_TIMEOUT_MS, chromium, free_port, nav, new_page, settle, shot, start_server, stop_server
from test_cli import cli

pytestmark = pytest.mark.e2e


RUN_ID = "20240101-000000-a1b2c3"  # named by the links below; a newer run sits beside it, so the link must win
NEWER_RUN_ID = "20240102-000000-d4e5f6"
CV_ID = "20240103-000000-c0ffee"
TITLES = ["Home", "Data", "Model", "Train", "Results", "Predict", "Runs", "Search", "Cross-validate", "Label review",
          "Ensembles"]
PAGES = [("/", "Fine-Tune Lab"), ("/data", "Data"), ("/model", "Model"), ("/train", "Train"), ("/results", "Results"),
         ("/predict", "Predict"), ("/runs", "Runs"), ("/search", "Hyperparameter search"),
         ("/crossval", "Cross-validation"), ("/review", "Label review"), ("/ensembles", "Ensembles")]
LINKS = [(f"/train?run={RUN_ID}", "Train"), (f"/results?run={RUN_ID}", "Results"),
         (f"/crossval?cv={CV_ID}", "Cross-validation"), (f"/review?cv={CV_ID}", "Label review"),
         (f"/ensembles?cv={CV_ID}", "Ensembles"), ("/search?search=gone", "Hyperparameter search")]


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def home_with_runs(tmp_path_factory) -> Path:
    """A workspace holding two finished runs (trained by the CLI), as a server finds it after a restart."""
    home = tmp_path_factory.mktemp("arrival")
    data = make_dataset(home / "fruit", {"apple": 6, "plum": 6})
    runs = home / "workspace" / "runs"
    for command in (["train", data, "--out", runs / RUN_ID], ["cv", data, "--out", home / "workspace" / "cv" / CV_ID,
                                                              "--folds", "2"]):
        made = cli(*command, "--epochs", "1", "--threads", "1", "--backbone", "mobilenet_v3_small", "--weights",
                   "random", "--image-size", "32", home=home / "workspace")  # what is shown matters here, not how good
        assert made.returncode == 0, made.stderr
    shutil.copytree(runs / RUN_ID, runs / NEWER_RUN_ID)
    return home


@pytest.fixture(scope="module")
def shared_server(home_with_runs):
    """One server for the shared links: each opens in a new session, which is what a link starts."""
    port = free_port()
    proc = start_server(home_with_runs, port, log="server-links.log")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)
    log = (home_with_runs / "server-links.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def assert_no_exception(page) -> None:
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    body = page.locator("body").inner_text()
    assert "has no attribute" not in body and "Traceback" not in body, body[:2000]


def arrive(browser, url: str, title: str, path: str) -> None:
    """Open `url` in a new session and check what a person sees first: the page's heading, the app's own
    navigation, no exception, and for a link the thing it names."""
    page = new_page(browser)
    try:
        page.goto(url)
        page.get_by_role("heading", name=title, level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
        settle(page)
        assert_no_exception(page)
        links = page.locator('[data-testid="stSidebarNav"]').get_by_role("link")
        expect(links).to_contain_text(TITLES)  # the app's own navigation, not one made from a pages folder
        if "run=" in path:
            assert RUN_ID in page.url
        if path.startswith("/results?"):
            expect(page.get_by_role("combobox", name="Run")).to_have_value(re.compile(RUN_ID))  # not the newest
        if path.startswith("/train?"):
            expect(page.get_by_role("link", name="Open its results")).to_be_visible()
        if path.startswith("/crossval?"):
            expect(page.get_by_text("Pooled out-of-fold confusion matrix")).to_be_visible()
        if path.startswith(("/review?", "/crossval?")):
            assert CV_ID in page.url
        if path.startswith("/search?"):
            expect(page.get_by_text("There is no search 'gone' here")).to_be_visible()
    finally:
        shot(page, "arrival-" + (re.sub(r"\W+", "-", path).strip("-") or "home"))
        page.context.close()


@pytest.mark.parametrize("path,title", PAGES, ids=[p for p, _ in PAGES])
def test_every_page_works_as_the_first_page_of_a_fresh_server(home_with_runs, browser, path, title):
    """A bookmark is the first request a newly started server gets: app.py must run first."""
    port = free_port()
    proc = start_server(home_with_runs, port, log=f"server-{port}.log")
    try:
        arrive(browser, f"http://127.0.0.1:{port}{path}", title, path)
    finally:
        stop_server(proc)
    log = (home_with_runs / f"server-{port}.log").read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("path,title", LINKS, ids=[p for p, _ in LINKS])
def test_a_shared_link_opens_what_it_names_as_a_sessions_first_page(shared_server, browser, path, title):
    """A link someone sent (or a tab reconnecting) starts a new session on that page, naming a run or a
    cross-validation: that one opens, not the newest; a link to something gone says so."""
    arrive(browser, shared_server + path, title, path)


def process_running(pid: int) -> bool:
    """A zombie has ended: once its server is gone, a worker's parent is init here, which may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def shown_epoch(page) -> int:
    text = page.locator('[data-testid="stProgress"]').last.inner_text()
    return int(re.search(r"epoch (\d+)/", text).group(1))


def test_training_survives_a_server_restart_under_an_open_train_tab(browser, tmp_path, capsys):
    home, port = tmp_path, free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(home, port)
    page = new_page(browser)
    pid = None
    try:
        page.goto(f"{url}/data")
        page.get_by_role("heading", name="Data", level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
        page.get_by_role("tab", name="Sample data").click()
        page.get_by_role("button", name="Load the sample dataset").click()
        page.get_by_text("Thumbnails").wait_for(timeout=120_000)
        settle(page)

        nav(page, "Model")
        page.get_by_text("Full fine-tuning (every layer trains)").click()  # slow epochs: ample time to restart
        settle(page)
        nav(page, "Train")
        page.get_by_text("Augmentation").click()
        for name, value in (("Image size (px)", "96"), ("Epochs", "200")):  # a few seconds an epoch, for minutes
            box = page.get_by_role("spinbutton", name=name)
            box.fill(value)
            box.press("Enter")
            settle(page)
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url(re.compile(r"run="), timeout=RERUN_TIMEOUT_MS)
        run_id = re.search(r"run=([\w-]+)", page.url).group(1)
        run_dir = home / "workspace" / "runs" / run_id
        page.get_by_text(re.compile(r"Validation confusion matrix, epoch \d+")).wait_for(timeout=240_000)
        before, stale = shown_epoch(page), page.locator('[data-testid="stProgress"]').last.inner_text()
        pid = json.loads((run_dir / "worker.json").read_text())["pid"]
        shot(page, "arrival-restart-1-training")

        stop_server(proc)  # the server goes; the tab stays open on /train?data=...&run=...
        assert process_running(pid), "the training worker ended with the server"
        page.locator('[data-testid="stApp"]:not([data-test-connection-state="CONNECTED"])').wait_for()
        shot(page, "arrival-restart-2-server-down")  # the tab has noticed
        proc = start_server(home, port, log="server-2.log")

        wanted = "n => [...document.querySelectorAll('[data-testid=\"stProgress\"]')].some(e => {" \
                 " const m = e.innerText.match(/running · epoch (\\d+)\\//); return m && +m[1] > n; })"
        redrawn = "s => [...document.querySelectorAll('[data-testid=\"stProgress\"]')].some(e => " \
                  "e.innerText.includes('running') && e.innerText !== s)"
        t0 = time.time()
        try:
            page.wait_for_function(redrawn, arg=stale, timeout=RERUN_TIMEOUT_MS)  # the tab reconnects by itself
            how = f"reconnected by itself in {time.time() - t0:.0f} s"
        except PlaywrightTimeout:
            page.reload()
            how = "needed a reload"
        page.wait_for_function(wanted, arg=before, timeout=90_000)
        assert run_id in page.url
        assert json.loads((run_dir / "worker.json").read_text())["pid"] == pid  # followed, not started again
        with capsys.disabled():
            print(f"\nepoch {before} before the restart, {shown_epoch(page)} after {time.time() - t0:.0f} s; "
                  f"the tab {how}")
        assert_no_exception(page)
        shot(page, "arrival-restart-3-reattached")

        page.get_by_role("button", name="Stop").click()
        page.get_by_text("Download the model package (zip)").wait_for(timeout=RERUN_TIMEOUT_MS)
        expect(page.locator('[data-testid="stProgress"]').last).to_contain_text("stopped")
        shot(page, "arrival-restart-4-stopped")
        deadline = time.time() + 30
        while process_running(pid) and time.time() < deadline:
            time.sleep(0.5)
        assert not process_running(pid), "the worker is still running after Stop"
        assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    finally:
        page.context.close()
        stop_server(proc)
        if pid is not None and process_running(pid):
            os.killpg(pid, signal.SIGKILL)  # never leave training behind on the machine


def memory_kb(pid: int) -> dict[str, int]:
    """Resident memory now and its peak since the last reset, from /proc (psutil is not installed)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    """Linux: writing 5 to clear_refs restarts the peak (VmHWM) from the current resident size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def big_zip(path: Path, small: Path, big_images: int) -> Path:
    """Two classes of small pictures and one of 2000x2000 RGB noise (about 12 MB each, incompressible), stored
    uncompressed: a zip of about 12 MB x big_images whose every file is a valid image."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(small.rglob("*.png")):
            z.write(f, f"fruit/{f.relative_to(small)}")
        for i in range(big_images):
            img = Image.frombytes("RGB", (2000, 2000), os.urandom(2000 * 2000 * 3))
            out = path.parent / "noise.png"
            img.save(out, compress_level=0)
            z.write(out, f"fruit/noise/{i:03d}.png")
    return path


def test_zip_of_hundreds_of_mb_uploads_without_copies_in_memory(browser, tmp_path, capsys):
    archive = big_zip(tmp_path / "fruit.zip", make_dataset(tmp_path / "small", {"apple": 10, "plum": 10}), 25)
    size_mb = archive.stat().st_size / 2**20
    home, port = tmp_path / "home", free_port()
    home.mkdir()
    proc = start_server(home, port)
    page = new_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{port}/data")
        page.get_by_role("heading", name="Data", level=1).wait_for(timeout=RERUN_TIMEOUT_MS)
        page.get_by_role("tab", name="Upload a zip").click()
        settle(page)
        base = memory_kb(proc.pid)["VmRSS"]
        reset_peak(proc.pid)
        t0 = time.time()
        uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Choose a zip")
        uploader.locator("input[type=file]").set_input_files(archive)
        page.get_by_role("button", name="Use this zip").wait_for(timeout=180_000)
        settle(page)
        uploaded, upload_s = memory_kb(proc.pid), time.time() - t0
        reset_peak(proc.pid)
        t0 = time.time()
        page.get_by_role("button", name="Use this zip").click()
        page.get_by_text("Thumbnails").wait_for(timeout=300_000)
        settle(page)
        loaded, load_s = memory_kb(proc.pid), time.time() - t0
        assert_no_exception(page)
        expect(page.locator('[data-testid="stMetric"]').filter(has_text="Images")).to_contain_text("45")
        expect(page.locator('[data-testid="stMetric"]').filter(has_text="Classes")).to_contain_text("3")
        assert "data=" in page.url
        shot(page, "arrival-big-zip")
    finally:
        page.context.close()
        stop_server(proc)
        archive.unlink()  # hundreds of MB: not left for pytest's kept temporary folders
        shutil.rmtree(home / "workspace", ignore_errors=True)

    mb = {k: v / 1024 for k, v in (("base", base), ("up_rss", uploaded["VmRSS"]), ("up_peak", uploaded["VmHWM"]),
                                     ("load_rss", loaded["VmRSS"]), ("load_peak", loaded["VmHWM"]))}
    with capsys.disabled():
        print(f"\nzip {size_mb:.0f} MB; server RSS before {mb['base']:.0f} MB; upload ({upload_s:.0f} s): peak "
              f"{mb['up_peak']:.0f}, after {mb['up_rss']:.0f}; 'Use this zip' ({load_s:.0f} s): peak "
              f"{mb['load_peak']:.0f}, after {mb['load_rss']:.0f} MB")
    # Streamlit's own share, unavoidable: receiving the upload peaks near two copies and keeps one; every rerun
    # while it sits in the uploader (the click on "Use this zip" too) deep-copies it once more (st.file_uploader's
    # value goes through deepcopy). Loading adds a decoding working set, never another whole copy of the zip.
    assert mb["up_peak"] - mb["base"] < 2.5 * size_mb
    assert mb["load_peak"] - mb["up_rss"] < size_mb + 200
