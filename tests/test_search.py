"""Hyperparameter search: real trials (fits on cached features of generated images) against a real Optuna study."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import ROOT, make_dataset
from core.config import ConfigError, RunConfig
from core.experiments import search
from core.experiments.space import check, grid
from core.runs import load_run, read_json, read_jsonl
from core.train.engine import fit

pytestmark = pytest.mark.integration


def base_config(data) -> RunConfig:
    """A linear probe on cached features of a small random backbone: a trial takes a fraction of a second."""
    config = RunConfig()
    config.data.source = str(data)
    config.data.val_ratio = 0.25
    config.model.backbone = "resnet18"
    config.model.weights = "random"
    config.model.strategy = "linear-probe"
    config.augment.image_size = 32
    config.optim.epochs = 6
    config.optim.batch_size = 8
    config.threads = 1
    return config


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", {"red": 16, "blue": 16, "green": 16})


def test_search_records_the_best_trial_and_its_run_repeats_it(data, workspace, tmp_path):
    out = tmp_path / "search"
    options = search.SearchConfig(space={"optim.lr": {"low": 1e-5, "high": 0.3, "log": True},
                                         "model.dropout": {"low": 0.0, "high": 0.5}},
                                  sampler="random", pruner="none", trials=6)
    search.create(base_config(data), options, out)
    summary = search.run(out)
    assert summary["status"] == "finished" and summary["trials"] == 6 and summary["pruned"] == 0
    rows = read_json(out / search.TRIALS_FILE)
    assert [r["number"] for r in rows] == list(range(6))
    values = [r["value"] for r in rows]
    assert summary["best_value"] == max(values)
    assert summary["best_params"] == rows[values.index(max(values))]["params"]
    assert len({r["params"]["optim.lr"] for r in rows}) == 6  # the sampler varied what it was told to
    # A trial keeps metrics only; the best one, trained as a normal run, repeats its score exactly (same seeds).
    trial_dir = out / "trials" / f"{summary['best_trial']:04d}"
    assert (trial_dir / "metrics.jsonl").is_file() and not (trial_dir / "model.safetensors").exists()
    result = fit(search.best_config(out), tmp_path / "best")
    assert result.best["val_acc"] == pytest.approx(summary["best_value"])
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_a_pruned_trial_stops_early(data, workspace, tmp_path):
    out = tmp_path / "search"
    options = search.SearchConfig(space={"optim.lr": {"low": 1e-7, "high": 0.1, "log": True}}, sampler="random",
                                  pruner="median", trials=14)
    search.create(base_config(data), options, out)
    summary = search.run(out)
    rows = read_json(out / search.TRIALS_FILE)
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert summary["pruned"] == len(pruned) >= 1
    for row in pruned:
        epochs = read_jsonl(out / "trials" / f"{row['number']:04d}" / "metrics.jsonl")
        assert row["pruned_at"] == len(epochs) < 6  # stopped before the 6 epochs it was given
        assert sorted(map(int, row["intermediate"])) == list(range(1, row["pruned_at"] + 1))
    assert all(len(read_jsonl(out / "trials" / f"{r['number']:04d}" / "metrics.jsonl")) == 6
               for r in rows if r["state"] == "complete")


def test_grid_search_runs_each_point_once(data, workspace, tmp_path):
    out = tmp_path / "search"
    space = {"optim.lr": {"low": 1e-3, "high": 1e-1, "log": True}, "model.dropout": {"choices": [0.0, 0.3]}}
    assert grid(space, 2) == {"optim.lr": [0.001, 0.1], "model.dropout": [0.0, 0.3]}
    options = search.SearchConfig(space=space, sampler="grid", pruner="none", trials=100, grid_points=2)
    assert options.budget == 4
    search.create(base_config(data), options, out)
    assert search.run(out)["trials"] == 4
    points = {(r["params"]["optim.lr"], r["params"]["model.dropout"]) for r in read_json(out / search.TRIALS_FILE)}
    assert points == {(0.001, 0.0), (0.001, 0.3), (0.1, 0.0), (0.1, 0.3)}


def test_a_resumed_search_draws_new_points_and_can_be_extended(data, workspace, tmp_path):
    out = tmp_path / "search"
    options = search.SearchConfig(space={"optim.lr": {"low": 1e-4, "high": 0.1, "log": True}}, sampler="random",
                                  pruner="none", trials=3)
    search.create(base_config(data), options, out)
    search.run(out)
    search.extend(out, trials=6)
    assert search.run(out)["trials"] == 6
    lrs = [r["params"]["optim.lr"] for r in read_json(out / search.TRIALS_FILE)]
    assert len(set(lrs)) == 6  # the resumed sampler did not replay the first session's draws


def test_trials_that_cannot_train_fail_with_the_reason_and_the_search_gives_up(data, workspace, tmp_path):
    out = tmp_path / "search"
    config = base_config(data)
    config.data.val_ratio = 0.0  # nothing to score a trial on
    search.create(config, search.SearchConfig(sampler="random", pruner="none", trials=20), out)
    summary = search.run(out)
    assert summary["status"] == "failed" and summary["failed"] == 3 and "validation split" in summary["error"]
    assert all("validation split" in r["error"] for r in read_json(out / search.TRIALS_FILE))


def test_the_minutes_are_a_hard_budget(data, workspace, tmp_path):
    out = tmp_path / "search"
    config = base_config(data)
    config.optim.epochs = 5000  # a trial far longer than the budget
    options = search.SearchConfig(space={"optim.lr": {"low": 1e-4, "high": 0.1, "log": True}}, sampler="random",
                                  pruner="none", trials=10, minutes=0.05)
    search.create(config, options, out)
    summary = search.run(out)
    assert summary["status"] == "finished"
    last = read_json(out / search.TRIALS_FILE)[-1]
    assert last["error"] == "cut short: the time budget ran out" and last["epochs"] < 5000  # stopped mid-trial


def test_a_bad_space_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr"):
        check({"optim.lrr": {"low": 0.1, "high": 1}})
    with pytest.raises(ConfigError, match="log range"):
        check({"optim.lr": {"low": 0, "high": 1, "log": True}})
    with pytest.raises(ConfigError, match="choices"):
        check({"model.strategy": {"low": 0, "high": 1}})
    with pytest.raises(ConfigError, match="'optim.lr' = 'fast'"):
        search.create(RunConfig(), search.SearchConfig(space={"optim.lr": {"choices": ["fast"]}}), tmp_path / "s")
    with pytest.raises(ConfigError, match="unknown backbone"):
        search.create(RunConfig(), search.SearchConfig(space={"model.backbone": {"choices": ["resnet-9000"]}}),
                      tmp_path / "s")
    with pytest.raises(ConfigError, match="sampler"):
        search.create(RunConfig(), search.SearchConfig(sampler="annealing"), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def _cli(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}, **kwargs)


def test_a_killed_search_resumes_with_the_same_study(data, workspace, tmp_path):
    out = tmp_path / "search"
    config = tmp_path / "config.json"
    config.write_text(base_config(data).to_json())
    args = ["search", data, "--out", out, "--config", config, "--trials", 24, "--pruner", "none", "--sampler", "tpe"]
    proc = _cli(*args)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_json(out / search.TRIALS_FILE, [])) < 4:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_json(out / search.TRIALS_FILE)
    done_before = sum(r["state"] == "complete" for r in killed)
    assert 3 <= done_before < 24
    # The same command again: the study is loaded, the trial the kill cut short is failed, the budget completed.
    again = _cli("search", "--out", out, "--trials", 24)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "resuming" in stderr
    rows = read_json(out / search.TRIALS_FILE)
    assert sum(r["state"] == "complete" for r in rows) == 24
    assert all(r["state"] in ("complete", "fail") for r in rows)
    assert [r["number"] for r in rows[:len(killed)]] == [r["number"] for r in killed]  # nothing was lost
    doc = read_json(out / search.SEARCH_FILE)
    assert doc["trials"] == 24 and doc["best_value"] == max(r["value"] for r in rows if r["value"] is not None)
    best_run = load_run(out / "best")
    assert best_run.best["val_acc"] == pytest.approx(doc["best_value"])
    study = optuna.load_study(study_name=doc["study"], storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / search.JOURNAL))))
    assert len(study.trials) == len(rows)


def test_workers_share_one_study(data, workspace, tmp_path):
    out = tmp_path / "search"
    config = tmp_path / "config.json"
    config.write_text(base_config(data).to_json())
    # Enough trials that the second process (a few seconds to import torch) joins before the first is done.
    proc = _cli("search", data, "--out", out, "--config", config, "--trials", 40, "--workers", 2, "--pruner", "none")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    rows = read_json(out / search.TRIALS_FILE)
    # Each worker checks the budget before its next trial, so two may both start the last one (Optuna's
    # MaxTrialsCallback): at most workers - 1 extra trials.
    assert 40 <= sum(r["state"] == "complete" for r in rows) <= 41
    assert len({r["worker"] for r in rows}) == 2  # two processes took trials from the one study
    assert json.loads((out / search.SEARCH_FILE).read_text())["best_run"] == str(out / "best")
