"""Shared fixtures: small generated image datasets on disk and an isolated workspace."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; fit() sets the process-wide count, so restore it afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
