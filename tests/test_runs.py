"""Run folders as the pages find them: ids from a URL never reach outside the runs folder."""
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
