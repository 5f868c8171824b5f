"""A shared server under load, in real Chromium against `streamlit run` on loopback, measured in one run.

The server runs as a lab would run it behind a signing-in reverse proxy (FTLAB_TRUSTED_HEADER=X-Forwarded-User;
tests/e2e_helpers.IdentityProxy, one port per user), in a temporary FTLAB_HOME, one job at a time
(FTLAB_MAX_JOBS=1):

1. sessions: N browser sessions at once (default 8), each a different user, each uploads its own folder of about
   --mb MB (512x512 noise PNGs, class names that are the user's own), loads it and starts a 1-epoch run (the
   first runs, the rest queue). Then every session's Data, Train and Runs pages are read: a class name of another
   user on any of them is a leak. The runs are stopped.
2. reconnect: one user starts a long run, closes the browser, waits --reconnect-s seconds (default 300), opens
   the run's link in a new browser: the job must show, still running. Then stopped.
3. upload cycles: one session stays on the Data page and uploads a folder of --cycle-mb MB and loads it,
   --cycles times (default 50; two folders in turn, each copied before); the server's resident memory after
   the first 5 and after the last is the growth.
4. start/stop: --start-stop times (default 20), Start training then Stop, waiting for "stopped" each time; the
   server's threads and child processes (its fork server aside, which waits for the next job) before and after
   are compared.

Prints each phase's figures (failures with their reason, peak server memory, memory growth, leaked processes
and threads) and one line of JSON. Bounded by --minutes (default 40): a phase that runs out of time fails with
that reason. A benchmark, not a test: it exits 0. About 20 minutes on 2 cores with the defaults.

    python bench/load.py [--sessions 8] [--mb 100] [--reconnect-s 300] [--cycles 50] [--start-stop 20]
                         [--phases sessions reconnect upload_cycles start_stop]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the browser tests' server, Chromium and signing-in proxy

from core.processes import descendants  # noqa: E402
from e2e_helpers import CHROMIUM, CHROMIUM_FLAGS, IDLE, IdentityProxy, free_port, start_server, stop_server  # noqa: E402

HEADER = "X-Forwarded-User"
UPLOAD_TIMEOUT_MS = 300_000
PHASES = ["sessions", "reconnect", "upload_cycles", "start_stop"]


def noise_images(folder: Path, mb: float, side: int = 512) -> list[Path]:
    """Incompressible PNGs (about 0.8 MB each at 512 px) adding up to `mb`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(max(2, round(mb * 1e6 / (side * side * 3)))):
        path = folder / f"{i:04d}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, compress_level=1)
        files.append(path)
    return files


def user_folder(root: Path, user: str, images: list[Path]) -> Path:
    """The same bytes (hard links, no disk) under class names that belong to this user alone."""
    folder = root / user
    for i, image in enumerate(images):
        target = folder / f"{user}-class{i % 2}" / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(image, target)
    return folder


class Memory(threading.Thread):
    """The server's resident memory, sampled every 0.2 s: its peak and the latest value."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.now, self.running = pid, 0, 0, True

    def run(self) -> None:
        while self.running:
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            self.now = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
            self.peak = max(self.peak, self.now)
            time.sleep(0.2)


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def settle(page) -> None:
    """Until the rerun the last action caused has finished (the app's script state, as the browser tests wait)."""
    await page.locator(IDLE).wait_for(timeout=UPLOAD_TIMEOUT_MS)
    await page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=UPLOAD_TIMEOUT_MS)


async def open_as(browser, user: str):
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    return context, await context.new_page()


async def choose(page, folder: Path) -> None:
    """Pick a folder in the folder uploader, wait for every file to arrive ("Use this folder" shows with the first
    file, and a click before the last one loads a part of the folder), then for the button."""
    files, done = len(list(folder.rglob("*.png"))), []

    def finished(request) -> None:
        if request.method == "PUT" and "/_stcore/upload_file" in request.url:
            done.append(request.url)
    page.on("requestfinished", finished)
    try:
        uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Choose a folder")
        await uploader.locator("input[type=file]").set_input_files(str(folder))
        deadline = time.time() + UPLOAD_TIMEOUT_MS / 1000
        while len(done) < files and time.time() < deadline:
            await asyncio.sleep(0.2)
    finally:
        page.remove_listener("requestfinished", finished)
    await page.get_by_role("button", name="Use this folder").wait_for(timeout=UPLOAD_TIMEOUT_MS)
    await settle(page)


async def use_folder(page, key: str | None = None) -> str:
    """Click "Use this folder" and wait until the page shows the loaded dataset: its key in the URL and in the
    sidebar (drawn by the rerun that follows the load, with a fresh uploader; a folder picked before that rerun
    ends goes into the uploader it replaces, and is lost). Returns the key."""
    before = re.search(r"data=(\w+)", page.url)
    await page.get_by_role("button", name="Use this folder").click(timeout=UPLOAD_TIMEOUT_MS)
    await page.wait_for_url(lambda u: (m := re.search(r"data=(\w+)", u)) is not None and (
        m.group(1) == key if key else before is None or m.group(1) != before.group(1)), timeout=UPLOAD_TIMEOUT_MS)
    key = re.search(r"data=(\w+)", page.url).group(1)
    await page.locator('[data-testid="stSidebar"]').get_by_text(key).wait_for(timeout=UPLOAD_TIMEOUT_MS)
    await page.get_by_text("Thumbnails").wait_for(timeout=UPLOAD_TIMEOUT_MS)
    await settle(page)
    return key


async def upload(page, url: str, folder: Path) -> str:
    """Upload a folder on the Data page and load it; returns the dataset key from the URL."""
    await page.goto(f"{url}/data")
    await page.get_by_role("heading", name="Data", level=1).wait_for(timeout=120_000)
    await choose(page, folder)
    return await use_folder(page)


async def start_run(page, url: str, project: str, key: str, epochs: int) -> str:
    """Full fine-tuning (a linear probe is solved in seconds: nothing to queue or stop), `epochs` epochs."""
    await page.goto(f"{url}/model?project={project}&data={key}")
    await page.get_by_role("heading", name="Model", level=1).wait_for(timeout=120_000)
    await page.get_by_text("Full fine-tuning (every layer trains)").click()
    await settle(page)
    await page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Train").click()
    await page.get_by_role("heading", name="Train", level=1).wait_for(timeout=120_000)
    await settle(page)
    box = page.get_by_role("spinbutton", name="Epochs")
    await box.fill(str(epochs))
    await box.press("Enter")
    await settle(page)
    await page.get_by_role("button", name="Start training").click()
    await page.wait_for_url(re.compile(r"run="), timeout=120_000)
    return re.search(r"run=([\w-]+)", page.url).group(1)


async def stop_run(page) -> None:
    await page.get_by_role("button", name="Stop").click(timeout=120_000)
    await page.locator('[data-testid="stMain"] [data-testid="stProgress"]').filter(has_text="stopped").first.wait_for(
        timeout=120_000)


async def page_text(page, url: str, path: str, project: str, key: str) -> str:
    await page.goto(f"{url}/{path}?project={project}&data={key}")
    await page.locator('[data-testid="stMain"] h1').first.wait_for(timeout=120_000)
    await settle(page)
    return await page.locator("body").inner_text()


async def one_session(browser, proxy: IdentityProxy, user: str, folder: Path, users: list[str]) -> dict:
    result = {"user": user, "ok": False}
    url = proxy.url(user)
    context, page = await open_as(browser, user)
    try:
        t0 = time.time()
        key = await upload(page, url, folder)
        result["upload_s"] = round(time.time() - t0, 1)
        shown = await page.locator('[data-testid="stMetric"]').filter(has_text="Images").inner_text()
        result["all_images"] = str(len(list(folder.rglob("*.png")))) in shown  # the whole folder, not a part
        result["run"] = await start_run(page, url, f"{user}/main", key, epochs=1)
        seen = ""
        for path in ("data", "train", "runs"):
            seen += await page_text(page, url, path, f"{user}/main", key)
        leaks = sorted({u for u in users if u != user and f"{u}-class" in seen})
        result["leaks"] = leaks
        result["own_data_shown"] = f"{user}-class0" in seen
        await page.goto(f"{url}/train?project={user}/main&data={key}&run={result['run']}")
        await page.get_by_role("heading", name="Train", level=1).wait_for(timeout=120_000)
        await settle(page)
        if await page.get_by_role("button", name="Stop").count():
            await stop_run(page)
        result["ok"] = not leaks and result["own_data_shown"] and result["all_images"]
    except Exception as exc:  # a benchmark reports what failed and goes on
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        await context.close()
    return result


async def sessions_phase(browser, proxy: IdentityProxy, folders: dict[str, Path], memory: Memory) -> dict:
    memory.peak = memory.now
    t0 = time.time()
    results = await asyncio.gather(*(one_session(browser, proxy, u, f, list(folders)) for u, f in folders.items()))
    return {"sessions": len(results), "failures": [r for r in results if not r["ok"]],
            "leaks": sum(len(r.get("leaks", ())) for r in results), "peak_server_mb": round(memory.peak / 2**20),
            "seconds": round(time.time() - t0), "upload_s": [r.get("upload_s") for r in results]}


async def reconnect_phase(browser, url: str, folder: Path, wait_s: float) -> dict:
    context, page = await open_as(browser, "reconnect")
    key = await upload(page, url, folder)
    run = await start_run(page, url, "reconnect/main", key, epochs=200)
    link = page.url
    await context.close()  # the connection drops
    await asyncio.sleep(wait_s)
    context, page = await open_as(browser, "reconnect")
    try:
        await page.goto(link)
        await page.get_by_role("heading", name="Train", level=1).wait_for(timeout=120_000)
        await settle(page)
        progress = await page.locator('[data-testid="stMain"] [data-testid="stProgress"]').last.inner_text(timeout=60_000)
        back = run in page.url and "running" in progress
        if await page.get_by_role("button", name="Stop").count():
            await stop_run(page)
        return {"away_s": wait_s, "back_to_running_job": back, "progress": progress.strip()[:80]}
    finally:
        await context.close()


async def cycles_phase(browser, url: str, folders: list[Path], cycles: int, memory: Memory) -> dict:
    """One session, as a person stays on the Data page: upload, load, upload the other folder into the fresh
    uploader, load... (two folders, so each load changes the URL's dataset)."""
    context, page = await open_as(browser, "cycles")
    rss = []
    try:
        keys = [await upload(page, url, folder) for folder in folders]  # each copied once, before measuring
        await page.goto(f"{url}/data")
        await page.get_by_role("heading", name="Data", level=1).wait_for(timeout=120_000)
        for i in range(cycles):
            try:
                await choose(page, folders[i % 2])
                await use_folder(page, keys[i % 2])
            except Exception as exc:
                shot = ROOT / "test-artifacts" / "load" / f"cycle-{i}.png"
                shot.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(shot), full_page=True)
                text = " ".join((await page.locator('[data-testid="stMain"]').inner_text()).split())[:600]
                raise RuntimeError(f"cycle {i}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}; "
                                   f"the page showed: {text} (screenshot {shot})") from exc
            rss.append(memory.now)
    finally:
        await context.close()
    warm = rss[min(4, len(rss) - 1)]
    return {"cycles": len(rss), "rss_after_5_mb": round(warm / 2**20), "rss_after_last_mb": round(rss[-1] / 2**20),
            "growth_mb": round((rss[-1] - warm) / 2**20)}


async def start_stop_phase(browser, url: str, folder: Path, times: int, server_pid: int) -> dict:
    context, page = await open_as(browser, "startstop")
    try:
        key = await upload(page, url, folder)
        await quiet(server_pid, threads_of(server_pid))
        threads_before = threads_of(server_pid)
        for _ in range(times):
            await start_run(page, url, "startstop/main", key, epochs=200)
            await page.locator('[data-testid="stMain"] [data-testid="stProgress"]').filter(has_text="running").first.wait_for(
                timeout=180_000)
            await stop_run(page)
    finally:
        await context.close()
    await quiet(server_pid, threads_before)
    return {"cycles": times, "leaked_processes": len(workers(server_pid)), "threads_before": threads_before,
            "threads_after": threads_of(server_pid)}


async def quiet(server_pid: int, threads: int, seconds: float = 60) -> None:
    """Wait (bounded) until the server has no worker left and no more threads than `threads`: a stopped worker
    is killed after the grace period, and its supervising thread ends once it is reaped."""
    deadline = time.time() + seconds
    while time.time() < deadline and (workers(server_pid) or threads_of(server_pid) > threads):
        await asyncio.sleep(1)


def workers(server_pid: int) -> list[int]:
    """The server's descendants but its fork server, which stays for the next job (core/jobs/forkserver.py)."""
    def command(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""
    return [p for p in descendants(server_pid) if b"core.jobs.forkserver" not in command(p)]


async def main_async(args: argparse.Namespace, home: Path) -> dict:
    from playwright.async_api import async_playwright

    images = noise_images(home / "noise", args.mb)
    users = [f"user{i}" for i in range(args.sessions)]
    folders = {u: user_folder(home / "uploads", u, images) for u in users}
    small = noise_images(home / "small-noise", args.cycle_mb)
    cycle_folder = user_folder(home / "uploads", "cycles", small)
    other_folder = user_folder(home / "uploads", "cycles-other", small)
    os.environ |= {"FTLAB_TRUSTED_HEADER": HEADER, "FTLAB_MAX_JOBS": "1"}  # the server's environment
    port = free_port()
    server = start_server(home, port)
    proxy = IdentityProxy(port, HEADER, users + ["reconnect", "cycles", "startstop"])
    memory = Memory(server.pid)
    memory.start()
    deadline = time.time() + args.minutes * 60
    out: dict = {"mb_per_upload": round(sum(p.stat().st_size for p in images) / 1e6)}
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            for name, phase in (
                    ("sessions", lambda: sessions_phase(browser, proxy, folders, memory)),
                    ("reconnect", lambda: reconnect_phase(browser, proxy.url("reconnect"),
                                                          user_folder(home / "uploads", "reconnect", images),
                                                          args.reconnect_s)),
                    ("upload_cycles", lambda: cycles_phase(browser, proxy.url("cycles"), [cycle_folder, other_folder],
                                                           args.cycles, memory)),
                    ("start_stop", lambda: start_stop_phase(browser, proxy.url("startstop"), cycle_folder,
                                                            args.start_stop, server.pid))):
                if name not in args.phases:
                    continue
                left = deadline - time.time()
                try:
                    out[name] = await asyncio.wait_for(phase(), timeout=max(1.0, left))
                except Exception as exc:
                    out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'out of time'}"}
                print(name, json.dumps(out[name]), flush=True)
            await browser.close()
    finally:
        memory.running = False
        out["peak_server_mb"] = round(memory.peak / 2**20)
        proxy.close()
        stop_server(server)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--mb", type=float, default=100.0, help="size of each session's upload")
    parser.add_argument("--reconnect-s", type=float, default=300.0)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--cycle-mb", type=float, default=10.0)
    parser.add_argument("--start-stop", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ftlab-load-"))
    try:
        out = asyncio.run(main_async(args, home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    s = out.get("sessions", {})
    print(f"\nsessions {s.get('sessions')}, failures {len(s.get('failures', [])) if 'failures' in s else s.get('error')}, "
          f"leaks {s.get('leaks')}, peak server memory {out['peak_server_mb']} MB "
          f"(uploads of {out['mb_per_upload']} MB each)")
    c, t, r = out.get("upload_cycles", {}), out.get("start_stop", {}), out.get("reconnect", {})
    print(f"upload cycles {c.get('cycles')}: memory growth {c.get('growth_mb')} MB; start/stop {t.get('cycles')}: "
          f"leaked processes {t.get('leaked_processes')}, threads {t.get('threads_before')} -> {t.get('threads_after')}; "
          f"back after {r.get('away_s')} s away: {r.get('back_to_running_job')}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
