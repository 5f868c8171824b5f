"""The built-in sample: deterministic, clean to the validator, and learnable by the default run."""
from __future__ import annotations

import pytest
import hashlib
import time
from pathlib import Path

from core.config import RunConfig
from core.train.engine import fit
from core.data.sample_data import CLASSES, SAMPLE_NAME, describe, write_sample
from core.data.validation import load_dataset

pytestmark = pytest.mark.unit


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path):
    a = hashes(write_sample(tmp_path / "a", images_per_class=6, size=64))
    b = hashes(write_sample(tmp_path / "b", images_per_class=6, size=64))
    c = hashes(write_sample(tmp_path / "c", images_per_class=6, size=64, seed=1))
    assert len(a) == 18 and a == b
    assert a.keys() == c.keys() and not set(a.values()) & set(c.values())
    assert len(set(a.values())) == 18  # no two pictures alike


def test_the_sample_passes_validation_cleanly(tmp_path, workspace):
    folder = write_sample(tmp_path / SAMPLE_NAME)
    report = load_dataset(folder, workspace).report
    assert report.trainable and report.layout == "folders"
    assert report.classes == {name: 40 for name in CLASSES}
    assert report.skipped == [] and report.warnings == []
    assert report.sizes["min"] == report.sizes["max"] == [96, 96] and report.modes == {"RGB": 120}
    assert "3 classes of 40 generated pictures" in describe()


@pytest.mark.integration
def test_the_default_run_learns_the_sample_in_seconds(tmp_path, workspace, monkeypatch):
    """What a first-time user gets from one click: RunConfig() defaults, only the data set."""
    for var in ("HF_HOME", "TORCH_HOME"):  # no library cache: the packaged ImageNet weights, as on a fresh install
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    config = RunConfig()
    config.data.source = str(write_sample(tmp_path / SAMPLE_NAME))
    config.threads = 2
    started = time.perf_counter()
    result = fit(config, tmp_path / "run")
    seconds = time.perf_counter() - started
    acc = result.best["val_acc"]
    print(f"sample fit: best val_acc {acc:.3f} (epoch {result.best_epoch}) in {seconds:.1f} s; "
          f"val_acc by epoch {[round(r['val_acc'], 3) for r in result.history]}")
    assert result.weights.source == "packaged" and result.status == "finished"
    assert acc >= 0.8  # chance is 1/3
