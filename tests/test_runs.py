"""Run folders as the pages find them: ids from a URL never reach outside the runs folder."""
import os
import shutil
import threading

import pytest

from core import runs

pytestmark = pytest.mark.unit


def test_find_run_takes_plain_ids_only(tmp_path):
    root = tmp_path / "runs"
    (root / "20260101-000000-abcdef").mkdir(parents=True)
    (root / "20260101-000000-abcdef" / "config.json").write_text("{}")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "config.json").write_text("{}")
    assert runs.find_run(root, "20260101-000000-abcdef") == root / "20260101-000000-abcdef"
    for bad in ("../secret", "..", "", "a/b", "/etc", "missing-run"):
        assert runs.find_run(root, bad) is None


def test_load_run_reads_a_run_in_progress(tmp_path):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    runs.write_json(run_dir / "config.json", {"model": {"backbone": "resnet18"}, "provenance": {"weights": {"source": "random"}}})
    runs.write_status(run_dir, "running", best_epoch=1)
    runs.append_jsonl(run_dir / "metrics.jsonl", {"epoch": 1, "val_acc": 0.5, "seconds": 2.0})
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val_')  # the writer was cut off mid-line
    run = runs.load_run(run_dir)
    assert run.best == {"epoch": 1, "val_acc": 0.5, "seconds": 2.0} and run.seconds == 2.0
    assert run.weights_source == "random" and run.confusion is None and run.classes == []
    with pytest.raises(FileNotFoundError):
        runs.load_run(tmp_path)


def race(n: int, *writers) -> list[BaseException]:
    """Run each writer n times in its own thread, all starting together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(writers))

    def loop(write):
        start.wait()
        for i in range(n):
            try:
                write(i)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=loop, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_writers_of_the_same_json_never_clobber_each_other(tmp_path):
    """Two sessions writing one file at the same moment: each write lands whole, and no temporary file is left."""
    path = tmp_path / "status.json"
    a, b = {"writer": "a", "pad": "x" * 200_000}, {"writer": "b", "pad": "y" * 300_000}
    errors = race(200, lambda i: runs.write_json(path, a), lambda i: runs.write_json(path, b))
    assert errors == []
    assert runs.read_json(path) in (a, b)
    assert os.listdir(tmp_path) == ["status.json"]


def test_replace_atomically_leaves_the_old_file_and_no_temporary_on_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with runs.replace_atomically(path) as tmp:
            assert tmp.parent == tmp_path and tmp != path
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["model.safetensors"]


def write_run(root, run_id, status="finished", epochs=2, age=3600.0):
    """A run folder as the engine leaves it, its files dated `age` seconds ago (0: just written)."""
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    runs.write_json(run_dir / "config.json", {"model": {"backbone": "resnet18", "strategy": "full"}})
    for epoch in range(1, epochs + 1):
        runs.append_jsonl(run_dir / "metrics.jsonl", {"epoch": epoch, "val_acc": epoch / 10, "seconds": 1.0})
    runs.write_status(run_dir, status, best_epoch=epochs)
    if age:
        for path in run_dir.iterdir():
            os.utime(path, (path.stat().st_mtime - age,) * 2)
    return run_dir


def summary(root):
    return {r["id"]: (r["status"], r["epochs"], r["val_acc"]) for r in runs.list_runs(root)}


def test_list_runs_shows_every_change_on_disk_on_the_next_call(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "r1")
    write_run(root, "r2", status="running")
    write_run(root, "r3")
    assert summary(root) == {"r1": ("finished", 2, 0.2), "r2": ("running", 2, 0.2), "r3": ("finished", 2, 0.2)}
    write_run(root, "r4", epochs=1, age=0)
    shutil.rmtree(root / "r3")
    runs.append_jsonl(root / "r2" / "metrics.jsonl", {"epoch": 3, "val_acc": 0.9, "seconds": 1.0})
    runs.write_status(root / "r1", "stopped", best_epoch=1)
    assert summary(root) == {"r1": ("stopped", 2, 0.1), "r2": ("running", 3, 0.2), "r4": ("finished", 1, 0.1)}
    runs.write_status(root / "r2", "finished", best_epoch=3)
    assert summary(root)["r2"] == ("finished", 3, 0.9)
    assert [r["id"] for r in runs.list_runs(root)] == ["r4", "r2", "r1"]


def test_list_runs_reads_an_unchanged_run_once(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    for run_id in ("r1", "r2", "r3"):
        write_run(root, run_id)
    read = []
    real = runs.load_run
    monkeypatch.setattr(runs, "load_run", lambda run_dir: read.append(run_dir.name) or real(run_dir))
    first = runs.list_runs(root)
    assert sorted(read) == ["r1", "r2", "r3"]
    assert runs.list_runs(root) == first and len(read) == 3
    runs.append_jsonl(root / "r2" / "metrics.jsonl", {"epoch": 3, "val_acc": 0.9, "seconds": 1.0})
    assert summary(root)["r2"] == ("finished", 3, 0.2) and read[3:] == ["r2"]


def test_a_run_just_written_is_read_again_even_when_its_files_keep_their_stamp(tmp_path):
    """Two writes within one tick of the file system's clock can leave size, date and inode as they were."""
    root = tmp_path / "runs"
    status = write_run(root, "r1", status="running", age=0) / "status.json"
    assert summary(root)["r1"][0] == "running"
    before = status.stat()
    status.write_text(status.read_text().replace('"running"', '"stopped"'))  # in place, the same length
    os.utime(status, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = status.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)
    assert summary(root)["r1"][0] == "stopped"


def test_a_page_changing_its_rows_leaves_the_next_listing_as_on_disk(tmp_path):
    """The Runs page marks a run that never ended 'interrupted' in the rows it was given."""
    root = tmp_path / "runs"
    write_run(root, "r1", status="running")
    runs.list_runs(root)[0]["status"] = "interrupted"
    assert runs.list_runs(root)[0]["status"] == "running"
