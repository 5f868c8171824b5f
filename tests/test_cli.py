"""The headless CLI: what a command prints and its exit status, with `python -m core ...` itself run as a
user runs it in the tests of the entry point."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, make_dataset
from core.cli import main

pytestmark = pytest.mark.integration


def cli(*args, home) -> subprocess.CompletedProcess:
    """A command through the CLI's main(), in this process (a new interpreter would first spend seconds importing
    torch): its exit status and what it printed. The signal handlers a training command sets are put back; a
    command that becomes torchrun (--nproc, --nnodes) replaces its process, so it runs in python_m_core."""
    assert not {"--nproc", "--nnodes"} & set(map(str, args)), "torchrun replaces the process: use python_m_core"
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mp.setenv("FTLAB_HOME", str(home))
            code = main([str(a) for a in args])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def python_m_core(*args, home) -> subprocess.CompletedProcess:
    """`python -m core ...` in a new process, exactly as a user types it."""
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=os.environ | {"FTLAB_HOME": str(home)}, timeout=300)


def test_inspect_json_reports_classes_skipped_and_warnings(tmp_path):
    data = make_dataset(tmp_path / "data", {"cat": 6, "dog": 3})
    (data / "cat" / "notes.txt").write_text("not an image")
    out = cli("inspect", data, "--json", home=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["classes"] == {"cat": 6, "dog": 3}
    assert report["skipped"] == [{"path": "cat/notes.txt", "reason": report["skipped"][0]["reason"]}]
    assert "not an image" in report["skipped"][0]["reason"]
    assert any("'dog' has only 3 images" in w for w in report["warnings"])


def test_inspect_human_readable(tmp_path):
    data = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    out = cli("inspect", data, home=tmp_path / "ws")
    assert out.returncode == 0
    assert "12 usable images in 2 classes" in out.stdout


def test_inspect_users_and_launching_answer_without_importing_torch(tmp_path):
    """Checking a dataset or listing a server's accounts answers in about a second, and a run on several processes
    becomes torchrun as soon: none waits for torch (only the processes that train import it)."""
    data = make_dataset(tmp_path / "data", {"cat": 3, "dog": 3})
    code = "import sys; from core import cli; rc = cli.main(sys.argv[1:]); print(rc, 'torch' in sys.modules)"
    launch = ["train", str(data), "--out", str(tmp_path / "run"), "--nnodes", "2", "--print", "commands"]
    for args in (["inspect", str(data)], ["users", "list"], launch):
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                             env=os.environ | {"FTLAB_HOME": str(tmp_path / "ws")}, timeout=120)
        assert out.stdout.splitlines()[-1] == "0 False", (args, out.stdout, out.stderr)


@pytest.mark.parametrize("make, reason", [
    (lambda d: make_dataset(d, {"only": 6}), "Only one class"),
    (lambda d: (d / "cat").mkdir(parents=True), "no files"),
    (lambda d: None, "does not exist"),
])
def test_inspect_untrainable_exits_2_with_one_line(tmp_path, make, reason):
    data = tmp_path / "data"
    make(data)
    out = python_m_core("inspect", data, home=tmp_path / "ws")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0]
    assert "Traceback" not in out.stderr


def test_train_writes_run_and_summary(tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 10, "blue": 10})
    run = tmp_path / "run"
    out = cli("train", data, "--out", run, "--backbone", "mobilenet_v3_small", "--weights", "random",
              "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--lr", "0.002", "--seed", "3",
              home=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    assert "best epoch" in out.stdout and "random initialisation" in out.stdout
    assert "epoch 2/2" in out.stderr  # the progress bar
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["backbone"] == "mobilenet_v3_small"
    assert config["optim"]["lr"] == 0.002 and config["optim"]["epochs"] == 2
    assert config["seed"] == 3 and config["augment"]["image_size"] == 32
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # --config repeats a run exactly from its config.json.
    again = cli("train", data, "--out", tmp_path / "again", "--config", run / "config.json", home=tmp_path / "ws")
    assert again.returncode == 0, again.stderr
    first = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(l) for l in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in first] == pytest.approx([r["train_loss"] for r in second], rel=1e-5)


def test_bad_config_file_is_one_line(tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 6, "blue": 6})
    bad = tmp_path / "run.json"
    bad.write_text('{"optim": {"learning_rate": 1}}')
    out = cli("train", data, "--out", tmp_path / "run", "--config", bad, home=tmp_path / "ws")
    assert out.returncode == 2 and "learning_rate" in out.stderr and "Traceback" not in out.stderr


def test_one_epoch_on_hymenoptera(tmp_path, hymenoptera):
    run = tmp_path / "run"
    out = cli("train", hymenoptera, "--out", run, "--epochs", "1", "--image-size", "64", "--batch-size", "32",
              "--backbone", "mobilenet_v3_small", home=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        assert isinstance(rows[0][key], float) and abs(rows[0][key]) < 1e6
    cm = json.loads((run / "confusion_matrix.json").read_text())
    assert cm["classes"] == ["ants", "bees"] and [sum(r) for r in cm["matrix"]] == [70, 83]
    assert (run / "model.safetensors").stat().st_size > 1e6


def test_lr_find_suggests_a_rate_for_the_config(tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 10, "blue": 10})
    out = cli("lr-find", data, "--json", "--steps", "30", "--backbone", "resnet18", "--weights", "random",
              "--image-size", "32", "--batch-size", "8", "--strategy", "layerwise", home=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    curve = json.loads(out.stdout)
    assert len(curve["lrs"]) == len(curve["losses"]) >= 10
    assert curve["lrs"] == sorted(curve["lrs"])
    assert curve["suggestion"] is None or curve["lrs"][0] <= curve["suggestion"] <= curve["lrs"][-1]
    assert curve["reason"]


def test_train_flags_reach_the_config(tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 8, "blue": 8})
    run = tmp_path / "run"
    out = cli("train", data, "--out", run, "--backbone", "resnet18", "--weights", "random", "--epochs", "1",
              "--image-size", "32", "--strategy", "partial", "--freeze-groups", "3", "--schedule", "step",
              "--label-smoothing", "0.1", "--class-weighting", "loss", "--patience", "2", "--nesterov",
              "--optimizer", "sgd", home=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["strategy"] == "partial" and config["model"]["freeze_groups"] == 3
    assert config["optim"]["schedule"] == "step" and config["optim"]["nesterov"] is True
    assert config["regularize"]["label_smoothing"] == 0.1 and config["early_stop"]["patience"] == 2
    assert "stage 3" in out.stderr and "no" in out.stderr  # the per-group table before training


def test_the_default_run_is_pretrained_and_good(tmp_path, hymenoptera):
    """`train DATA --out RUN` and nothing else: packaged ImageNet weights, linear probe, a good model."""
    run = tmp_path / "run"
    out = cli("train", hymenoptera, "--out", run, home=tmp_path / "ws")
    assert out.returncode == 0, out.stderr
    config = json.loads((run / "config.json").read_text())
    weights = config["provenance"]["weights"]
    assert config["model"]["backbone"] == "efficientnet_lite0" and weights["source"] == "packaged"
    assert len(weights["sha256"]) == 64 and weights["file"].endswith(".pth")
    best = max(json.loads(l)["val_acc"] for l in (run / "metrics.jsonl").read_text().splitlines())
    assert best >= 0.93  # bench/quality.py measures 0.954 here; the floor leaves room for platform noise
    assert "features computed once" in out.stderr and "random initialisation" not in out.stdout
