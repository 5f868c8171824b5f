"""Background jobs: real training in a thread, live snapshots, stop, queue, failure, eviction."""
import dataclasses
import time

import pytest

from conftest import make_dataset
from core.jobs import JobRegistry
from test_engine import small_config


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
    job_id = registry.submit(small_config(data, epochs=3))
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
    job_id = registry.submit(small_config(data, epochs=2))
    early = wait(registry, job_id, lambda s: s.status == "running")
    with pytest.raises(dataclasses.FrozenInstanceError):
        early.status = "finished"
    wait(registry, job_id, lambda s: not s.active)
    assert early.status == "running" and len(early.history) < 2  # taken earlier, still as it was


def test_stop_within_one_batch_keeps_best_weights(registry, data, workspace):
    job_id = registry.submit(small_config(data, epochs=50))
    wait(registry, job_id, lambda s: s.epoch >= 2 and s.batch >= 1 and s.phase == "train")
    registry.stop(job_id)
    asked = registry.snapshot(job_id)
    done = wait(registry, job_id, lambda s: not s.active, timeout=10)
    assert done.status == "stopped" and done.epoch == asked.epoch
    assert done.batch - asked.batch <= 1
    assert (done.run_dir / "model.safetensors").is_file()
    assert any("stopped" in text for _, _, text in done.messages)


def test_one_job_at_a_time_the_next_waits_in_the_queue(registry, data, workspace):
    first = registry.submit(small_config(data, epochs=2))
    second = registry.submit(small_config(data, epochs=1))
    queued = registry.snapshot(second)
    assert queued.status == "queued" and queued.queue_position == 1
    wait(registry, first, lambda s: not s.active)
    done = wait(registry, second, lambda s: not s.active)
    assert done.status == "finished" and done.started_at >= registry.snapshot(first).ended_at


def test_a_queued_job_can_be_cancelled(registry, data, workspace):
    first = registry.submit(small_config(data, epochs=2))
    second = registry.submit(small_config(data, epochs=1))
    registry.stop(second)
    assert registry.snapshot(second).status == "stopped"
    wait(registry, first, lambda s: not s.active)
    assert registry.snapshot(second).history == ()


def test_a_failed_job_says_why_and_the_next_one_runs(registry, tmp_path, workspace, data):
    bad = small_config(tmp_path / "nowhere")
    failed = registry.submit(bad)
    good = registry.submit(small_config(data, epochs=1))
    snap = wait(registry, failed, lambda s: not s.active)
    assert snap.status == "failed" and "does not exist" in snap.error and "Traceback" not in snap.error
    assert wait(registry, good, lambda s: not s.active).status == "finished"


def test_finished_jobs_are_evicted_but_their_runs_stay(tmp_path, data, workspace):
    registry = JobRegistry(tmp_path / "runs", keep_finished=1, threads=1)
    ids = [registry.submit(small_config(data, epochs=1)) for _ in range(3)]
    for job_id in ids:
        wait(registry, job_id, lambda s: s is None or not s.active)
    assert registry.snapshot(ids[0]) is None and registry.snapshot(ids[2]) is not None
    assert all((tmp_path / "runs" / i / "metrics.jsonl").is_file() for i in ids)


def test_resume_through_the_registry_continues_the_history(registry, data, workspace):
    job_id = registry.submit(small_config(data, epochs=50))
    wait(registry, job_id, lambda s: len(s.history) >= 1)
    registry.stop(job_id)
    stopped = wait(registry, job_id, lambda s: not s.active)
    config = small_config(data, epochs=len(stopped.history) + 1)
    again = registry.submit(config, resume_dir=stopped.run_dir)
    assert again == job_id
    done = wait(registry, again, lambda s: not s.active)
    assert done.status == "finished" and [r["epoch"] for r in done.history] == list(range(1, config.optim.epochs + 1))


def test_runs_are_listed_from_disk_after_a_restart(registry, data, workspace, tmp_path):
    from core.runs import list_runs
    job_id = registry.submit(small_config(data, epochs=2))
    done = wait(registry, job_id, lambda s: not s.active)
    rows = list_runs(tmp_path / "runs")  # a new process would see exactly this: nothing comes from memory
    assert [r["id"] for r in rows] == [job_id]
    row = rows[0]
    assert row["status"] == "finished" and row["epochs"] == 2 and row["backbone"] == "resnet18"
    assert row["val_acc"] == done.history[done.best_epoch - 1]["val_acc"] and row["weights"] == "random"
