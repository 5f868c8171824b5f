"""Background jobs: real training in a thread, live snapshots, stop, queue, failure, eviction."""
import dataclasses
import time

import pytest

from conftest import make_dataset
from core.jobs.registry import JobRegistry
from test_engine import MECHANICS, small_config


def wait(registry, job_id, until, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        snap = registry.snapshot(job_id)
        if until(snap):
            return snap
        time.sleep(0.05)
    raise AssertionError(f"timed out; last snapshot: {registry.snapshot(job_id)}")


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", {"red": 12, "blue": 12, "green": 12})


@pytest.fixture
def registry(tmp_path):
    return JobRegistry(tmp_path / "runs", threads=1)


def test_a_job_trains_in_the_background_and_reports_as_it_goes(registry, data, workspace):
    job_id = registry.submit(small_config(data, MECHANICS, epochs=3))
    live = wait(registry, job_id, lambda s: s.status == "running" and s.batch > 0)
    assert live.phase in ("train", "val") and live.epochs == 3 and 0 < live.progress < 1
    done = wait(registry, job_id, lambda s: not s.active)
    assert done.status == "finished" and done.error is None and done.progress == 1.0
    assert [r["epoch"] for r in done.history] == [1, 2, 3]
    assert len(done.batch_losses) >= 3 * 3 and done.batch_losses[-1][0] == pytest.approx(3.0)
    assert done.confusion is not None and len(done.confusion) == 3
    assert done.classes == ("blue", "green", "red") and done.groups[-1]["group"] == "head"
    assert (done.run_dir / "model.safetensors").is_file() and done.run_dir.name == job_id
    assert done.started_at and done.ended_at >= done.started_at


def test_snapshots_are_frozen_copies(registry, data, workspace):
    job_id = registry.submit(small_config(data, MECHANICS, epochs=2))
    early = wait(registry, job_id, lambda s: s.status == "running")
    with pytest.raises(dataclasses.FrozenInstanceError):
        early.status = "finished"
    wait(registry, job_id, lambda s: not s.active)
    assert early.status == "running" and len(early.history) < 2  # taken earlier, still as it was


def test_stop_within_one_batch_keeps_best_weights(registry, data, workspace):
    job_id = registry.submit(small_config(data, MECHANICS, epochs=50))
    wait(registry, job_id, lambda s: s.epoch >= 2 and s.batch >= 1 and s.phase == "train")
    registry.stop(job_id)
    asked = registry.snapshot(job_id)
    done = wait(registry, job_id, lambda s: not s.active, timeout=10)
    assert done.status == "stopped" and done.epoch == asked.epoch
    assert done.batch - asked.batch <= 1
    assert (done.run_dir / "model.safetensors").is_file()
    assert any("stopped" in text for _, _, text in done.messages)


def test_one_job_at_a_time_the_next_waits_in_the_queue(registry, data, workspace):
    first = registry.submit(small_config(data, MECHANICS, epochs=2))
    second = registry.submit(small_config(data, MECHANICS, epochs=1))
    queued = registry.snapshot(second)
    assert queued.status == "queued" and queued.queue_position == 1
    wait(registry, first, lambda s: not s.active)
    done = wait(registry, second, lambda s: not s.active)
    assert done.status == "finished" and done.started_at >= registry.snapshot(first).ended_at


def test_a_queued_job_can_be_cancelled(registry, data, workspace):
    first = registry.submit(small_config(data, MECHANICS, epochs=2))
    second = registry.submit(small_config(data, MECHANICS, epochs=1))
    registry.stop(second)
    assert registry.snapshot(second).status == "stopped"
    wait(registry, first, lambda s: not s.active)
    assert registry.snapshot(second).history == ()


def test_a_failed_job_says_why_and_the_next_one_runs(registry, tmp_path, workspace, data):
    bad = small_config(tmp_path / "nowhere", MECHANICS)
    failed = registry.submit(bad)
    good = registry.submit(small_config(data, MECHANICS, epochs=1))
    snap = wait(registry, failed, lambda s: not s.active)
    assert snap.status == "failed" and "does not exist" in snap.error and "Traceback" not in snap.error
    assert wait(registry, good, lambda s: not s.active).status == "finished"


def test_finished_jobs_are_evicted_but_their_runs_stay(tmp_path, data, workspace):
    registry = JobRegistry(tmp_path / "runs", keep_finished=1, threads=1)
    ids = [registry.submit(small_config(data, MECHANICS, epochs=1)) for _ in range(3)]
    for job_id in ids:
        wait(registry, job_id, lambda s: s is None or not s.active)
    assert registry.snapshot(ids[0]) is None and registry.snapshot(ids[2]) is not None
    assert all((tmp_path / "runs" / i / "metrics.jsonl").is_file() for i in ids)


def test_resume_through_the_registry_continues_the_history(registry, data, workspace):
    job_id = registry.submit(small_config(data, MECHANICS, epochs=50))
    wait(registry, job_id, lambda s: len(s.history) >= 1)
    registry.stop(job_id)
    stopped = wait(registry, job_id, lambda s: not s.active)
    config = small_config(data, MECHANICS, epochs=len(stopped.history) + 1)
    again = registry.submit(config, resume_dir=stopped.run_dir)
    assert again == job_id
    done = wait(registry, again, lambda s: not s.active)
    assert done.status == "finished" and [r["epoch"] for r in done.history] == list(range(1, config.optim.epochs + 1))


def test_runs_are_listed_from_disk_after_a_restart(registry, data, workspace, tmp_path):
    from core.runs import list_runs
    job_id = registry.submit(small_config(data, MECHANICS, epochs=2))
    done = wait(registry, job_id, lambda s: not s.active)
    rows = list_runs(tmp_path / "runs")  # a new process would see exactly this: nothing comes from memory
    assert [r["id"] for r in rows] == [job_id]
    row = rows[0]
    assert row["status"] == "finished" and row["epochs"] == 2 and row["backbone"] == MECHANICS
    assert row["val_acc"] == done.history[done.best_epoch - 1]["val_acc"] and row["weights"] == "random"


# --- worker processes -------------------------------------------------------------------------------------

import os
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import ROOT
from core.jobs.registry import JobError
from core.runs import read_json, read_jsonl

pytestmark = pytest.mark.integration


def timing_free(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_killed_worker_leaves_the_registry_serving_and_resumes_bitwise(registry, data, workspace, num_workers):
    config = small_config(data, epochs=3)  # resnet18: a wide window to kill it in
    config.augment.hflip, config.augment.color_jitter = 0.5, 0.3  # random augmentation must repeat too
    config.num_workers = num_workers
    whole = wait(registry, registry.submit(config), lambda s: not s.active)
    assert whole.status == "finished"

    job_id = registry.submit(config)
    live = wait(registry, job_id, lambda s: s.epoch == 2 and s.phase == "train" and s.batch >= 1)
    os.kill(live.pid, signal.SIGKILL)
    dead = wait(registry, job_id, lambda s: not s.active, timeout=30)
    assert dead.status == "failed" and "ended unexpectedly (signal 9)" in dead.error and "out of memory" in dead.error
    assert read_json(dead.run_dir / "status.json")["status"] == "failed"  # the Runs page offers Resume
    assert wait(registry, registry.submit(small_config(data, MECHANICS, epochs=1)), lambda s: not s.active).status == "finished"

    again = registry.submit(config, resume_dir=dead.run_dir)
    done = wait(registry, again, lambda s: not s.active)
    assert done.status == "finished" and [r["epoch"] for r in done.history] == [1, 2, 3]
    a, b = load_file(str(whole.run_dir / "model.safetensors")), load_file(str(done.run_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert timing_free(read_jsonl(whole.run_dir / "metrics.jsonl")) == timing_free(read_jsonl(done.run_dir / "metrics.jsonl"))


def test_a_run_is_the_same_alone_and_beside_another_job_and_the_preview(tmp_path, data, workspace):
    from core.data.augment import preview

    registry = JobRegistry(tmp_path / "runs", max_running=2, threads=1)
    config = small_config(data, MECHANICS, epochs=3)
    config.augment.hflip, config.model.dropout = 0.5, 0.2
    alone = wait(registry, registry.submit(config), lambda s: not s.active)
    other = small_config(data, MECHANICS, epochs=6, lr=0.01)
    busy = registry.submit(other)
    wait(registry, busy, lambda s: s.status == "running")
    beside = registry.submit(config)
    image = torch.rand(3, 40, 40)
    while registry.snapshot(beside).active:  # what the Train page's preview does on every rerun, meanwhile
        preview([image], config.augment, (0.5,) * 3, (0.5,) * 3, copies=3)
        torch.manual_seed(123)
    assert registry.snapshot(beside).status == "finished"
    assert timing_free(read_jsonl(alone.run_dir / "metrics.jsonl")) == \
        timing_free(read_jsonl(registry.snapshot(beside).run_dir / "metrics.jsonl"))
    wait(registry, busy, lambda s: not s.active)
    assert read_json(alone.run_dir / "config.json")["threads"] == 1  # set in the worker, recorded in the run


def test_stop_during_feature_extraction_ends_stopped(registry, workspace, tmp_path):
    """The stop is seen between feature batches, not after the last one (bench/jobs.py times it: 1.0 s idle)."""
    data = make_dataset(tmp_path / "big", {"a": 160, "b": 160}, size=(40, 40))
    config = small_config(data, MECHANICS, epochs=3)
    config.model.backbone, config.model.weights, config.model.strategy = "resnet18", "random", "linear-probe"
    config.augment.image_size = 224
    job_id = registry.submit(config)
    wait(registry, job_id, lambda s: s.phase == "features" and s.batch >= 1)
    registry.stop(job_id)
    done = wait(registry, job_id, lambda s: not s.active, timeout=60)
    assert done.status == "stopped" and done.error is None
    assert done.batches == 10 and 1 <= done.batch < done.batches  # of 10 feature batches, the last was never computed
    assert done.epoch == 0 and not done.history
    assert read_json(done.run_dir / "status.json")["status"] == "stopped"


def test_a_worker_that_does_not_stop_is_killed_after_the_grace_period(registry, data, workspace, monkeypatch):
    monkeypatch.setenv("FTLAB_STOP_GRACE", "1")
    job_id = registry.submit(small_config(data, MECHANICS, epochs=50))
    live = wait(registry, job_id, lambda s: s.epoch >= 1 and s.batch >= 1)
    os.kill(live.pid, signal.SIGSTOP)  # hung: it cannot see the stop
    registry.stop(job_id)
    done = wait(registry, job_id, lambda s: not s.active, timeout=20)
    assert done.status == "stopped" and "did not stop within 1 s and was killed" in done.error
    assert read_json(done.run_dir / "status.json")["status"] == "stopped"


def test_a_new_registry_reattaches_to_running_workers(tmp_path, data, workspace):
    """What a server restart does: the worker outlives the registry that started it."""
    first = JobRegistry(tmp_path / "runs", threads=1)
    job_id = first.submit(small_config(data, MECHANICS, epochs=40))
    wait(first, job_id, lambda s: s.epoch >= 2)
    second = JobRegistry(tmp_path / "runs", threads=1)  # the new server
    assert second.snapshot(job_id).status == "running"
    snap = wait(second, job_id, lambda s: len(s.history) >= 1)  # its events, read from the start
    later = wait(second, job_id, lambda s: s.epoch > snap.epoch)
    assert later.history[: len(snap.history)] == snap.history
    with pytest.raises(JobError, match="already running"):  # Resume from a second tab
        second.submit(small_config(data, MECHANICS, epochs=40), resume_dir=snap.run_dir)
    second.stop(job_id)
    done = wait(second, job_id, lambda s: not s.active, timeout=20)
    assert done.status == "stopped"


def test_the_learning_rate_finder_is_a_job(registry, data, workspace):
    job_id = registry.lr_find(small_config(data, MECHANICS, lr=0.01), steps=20)
    done = wait(registry, job_id, lambda s: not s.active)
    assert done.kind == "lr-find" and done.status == "finished" and done.batches == 20 and done.progress == 1.0
    assert len(done.result["lrs"]) == len(done.result["losses"]) > 0 and done.result["reason"]
    assert registry.active() == [] and not (registry.runs_root / job_id).exists()  # a sweep is not a run
    before = torch.get_num_threads()
    stopped = registry.lr_find(small_config(data, MECHANICS), steps=100_000)
    wait(registry, stopped, lambda s: s.batch >= 2)
    registry.stop(stopped)
    assert wait(registry, stopped, lambda s: not s.active, timeout=15).status == "stopped"
    assert torch.get_num_threads() == before  # nothing of it ran in this process


def test_ctrl_c_in_the_cli_stops_cleanly_and_resumes(data, workspace, tmp_path):
    run = tmp_path / "run"
    flags = ["--backbone", "resnet18", "--weights", "random", "--strategy", "full", "--image-size", "32",
             "--batch-size", "8", "--threads", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", str(data), "--out", str(run), "--epochs", "100",
                             *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not read_jsonl(run / "metrics.jsonl") and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    status = read_json(run / "status.json")
    assert status["status"] == "stopped" and "--resume" in err
    epochs = len(read_jsonl(run / "metrics.jsonl"))
    resumed = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(run), "--epochs",
                              str(epochs + 1), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, epochs + 2))
    assert read_json(run / "config.json")["optim"]["epochs"] == epochs + 1  # a resume with changed flags says so
