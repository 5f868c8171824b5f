"""Shared fixtures: small generated image datasets on disk and an isolated workspace; the test layers and the
rules each layer keeps."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# One core per test process, in this process and every server, worker and CLI it starts (they read FTLAB_CPUS):
# `make test` runs two test processes side by side on 2 cores, and tiny models run fastest on one thread anyway.
# A test about threads sets FTLAB_CPUS itself.
os.environ["FTLAB_CPUS"] = "1"
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"

# Colours far apart, so a few epochs on tiny images learn them: a real signal, not a coin flip.
COLOURS = [(220, 40, 40), (40, 60, 220), (40, 200, 60), (230, 210, 40), (150, 40, 200)]
# The head of a script run in a fresh process to measure what one call costs in memory: peak_mb() is the process's
# own peak (getrusage's would start at the parent's: Linux carries it over exec), restarted from what is resident now.
PEAK_MB = """
import json, re, sys
from pathlib import Path
def peak_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]) / 1024
"""
RESTART_PEAK = 'Path("/proc/self/clear_refs").write_text("5")\nbefore = peak_mb()\n'


def image_bytes(colour=(128, 128, 128), size=(32, 32), fmt="PNG", seed=0, mode="RGB") -> bytes:
    """A noisy image of one dominant colour, encoded in `fmt`."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_dataset(root: Path, counts: dict[str, int], size=(32, 32), fmt="PNG") -> Path:
    """ImageFolder layout: root/<class>/<i>.png, one colour per class."""
    for c, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{i}.{fmt.lower()}").write_bytes(
                image_bytes(COLOURS[c % len(COLOURS)], size, fmt, seed=c * 1000 + i))
    return root


def still_running(pids: list[int], seconds: float = 30) -> list[int]:
    """The processes of `pids` still running after up to `seconds`: a stopped job's processes are reaped soon after
    its end is shown, not at the same instant."""
    from core.processes import process_start_time

    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if process_start_time(p) is not None]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "workspace"
    monkeypatch.setenv("FTLAB_HOME", str(ws))
    return ws


@pytest.fixture
def two_class_folder(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", {"cat": 12, "dog": 12})


@pytest.fixture
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/datasets/hymenoptera is absent")
    return HYMENOPTERA


@pytest.fixture
def fetch_download(monkeypatch):
    """Click an AppTest download button the way the browser does: run its deferred callable, return the bytes."""
    import streamlit.testing.v1.app_test as app_test

    made = []
    real = app_test.MediaFileManager

    def recording(storage):
        manager = real(storage)
        made.append((manager, storage))
        return manager
    monkeypatch.setattr(app_test, "MediaFileManager", recording)

    def fetch(button) -> bytes:
        file_id = button.proto.deferred_file_id
        for manager, storage in reversed(made):
            try:  # data given as a callable runs on click; data given as bytes was stored when drawn
                url = manager.execute_deferred(file_id) if file_id else button.proto.url
                return storage.get_file(url.rsplit("/", 1)[-1]).content
            except Exception:  # registered in another run's manager
                continue
        raise AssertionError(f"no download registered as {file_id or button.proto.url!r}")
    return fetch


# The layers, by what a test costs (README: Tests). Each test has exactly one, the closest mark winning (a module's
# pytestmark, overridden on a test): `make test-unit` runs the first alone, `make test` all four.
LAYERS = {"unit": "no process started, no server, no fit over a second",
          "integration": "real fits, worker processes, the CLI, AppTest pages",
          "e2e": "a real browser against `streamlit run`",
          "distributed": "torchrun process groups"}
UNIT_SECONDS = 1.0  # a unit test slower than this is named at the end of the run: it belongs in integration


def layer_of(item) -> str | None:
    return next((mark.name for mark in item.iter_markers() if mark.name in LAYERS), None)


def pytest_addoption(parser) -> None:
    parser.addoption("--layer", action="append", choices=list(LAYERS), default=[],
                     help="run only the tests of this layer (repeatable); by default every layer runs")


def pytest_configure(config) -> None:
    for name, what in LAYERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(config, items) -> None:
    if unmarked := [item.nodeid for item in items if layer_of(item) is None]:
        raise pytest.UsageError(f"tests without a layer ({', '.join(LAYERS)}): " + ", ".join(unmarked[:10]))
    for item in items:
        item.user_properties.append(("layer", layer_of(item)))  # reports carry it (from xdist's processes too)
    if wanted := config.getoption("--layer"):
        config.hook.pytest_deselected(items=[item for item in items if layer_of(item) not in wanted])
        items[:] = [item for item in items if layer_of(item) in wanted]


@pytest.fixture(autouse=True)
def layer_rules(request, monkeypatch):
    """A unit test that starts a process fails with the reason, so `make test-unit` stays a seconds-long loop."""
    if layer_of(request.node) == "unit":
        def refuse(self, args, *rest, **kwargs):
            raise AssertionError(f"a unit test starts no process ({args!r}): mark this test integration")
        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """fit() and the engines read the core count once a run starts; this process's own torch work (a model built
    in a test) uses the same one thread."""
    import torch

    torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter) -> None:
    slow = [(report.duration, report.nodeid) for report in terminalreporter.stats.get("passed", [])
            if report.when == "call" and ("layer", "unit") in report.user_properties and report.duration > UNIT_SECONDS]
    if slow:
        terminalreporter.write_line(f"unit tests over {UNIT_SECONDS:.0f} s (move them to integration): " +
                                    ", ".join(f"{nodeid} {seconds:.1f} s" for seconds, nodeid in sorted(slow)[::-1]))
