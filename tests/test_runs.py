"""Run folders as the pages find them: ids from a URL never reach outside the runs folder."""
import os
import threading

import pytest

from core import runs


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
