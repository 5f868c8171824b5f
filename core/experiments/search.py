"""Hyperparameter search with Optuna: each trial is a fit, pruned from its per-epoch validation score.

SEARCH_DIR/search.json   the search (space, sampler, budget), the base run config, and the results so far:
                         best_value, best_params, trials, pruned, failed, importances, best_run
SEARCH_DIR/trials.json   one row per trial of the study (every worker's, from the storage)
SEARCH_DIR/study.journal the Optuna study when no storage URL is given (journal file storage: Optuna's advice
                         for several processes on one machine, where SQLite locks)
SEARCH_DIR/trials/NNNN/  each trial this machine ran, as a run folder of metrics only (fit's save_model=False)

The study is the truth and survives anything: a search resumes by loading it, trials a killed process left
"running" are marked failed, and the budget counts the trials the study already holds. Workers on several
machines join one study through a shared storage URL (PostgreSQL, MySQL) and the same study name.
"""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from core import runs
from core.config import ROOT, ConfigError, RunConfig, from_dict, workspace_root
from core.data.validation import Dataset, load_dataset
from core.processes import process_start_time
from core.runs import SEARCH_FILE
from core.experiments import space as spaces
from core.train.callbacks import Callback, Callbacks, State, StopTraining
from core.train.engine import MONITORS, TrainingDiverged, check_config, fit

TRIALS_FILE = "trials.json"
JOURNAL = "study.journal"
IMPORTANCE_EVERY = 10  # trials between parameter-importance updates, which cost more than a cached trial
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TRIAL_ERRORS = (TrainingDiverged, ValueError)  # such a trial fails with its reason; the search goes on


@dataclass
class SearchConfig:
    space: dict[str, dict[str, Any]] = field(default_factory=spaces.default_space)
    metric: str = "val_acc"  # val_acc | val_balanced_acc | val_macro_f1 (maximised) | val_loss (minimised)
    sampler: str = "tpe"  # tpe | random | grid
    pruner: str = "median"  # median | hyperband | none
    trials: int = 100  # finished (completed or pruned) trials in the study, all workers together
    minutes: float = 0.0  # wall-clock budget; 0 = none
    workers: int = 1  # processes on this machine
    seed: int = 0
    grid_points: int = 4  # grid: values per numeric range
    storage: str = ""  # an Optuna storage URL; "" = the journal file in the search folder
    study: str = ""  # the study's name in the storage; "" = the search folder's name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchConfig":
        return from_dict(cls, data)

    def check(self) -> None:
        spaces.check(self.space)
        choices = {"metric": MONITORS, "sampler": ("tpe", "random", "grid"), "pruner": ("median", "hyperband", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"search {name} must be one of {', '.join(allowed)}")
        if self.trials < 1 or self.workers < 1 or self.minutes < 0:
            raise ConfigError("trials and workers must be at least 1, minutes at least 0")

    @property
    def budget(self) -> int:
        """Trials to run: a grid has no more than its points."""
        if self.sampler == "grid":
            return min(self.trials, spaces.grid_size(self.space, self.grid_points))
        return self.trials


class StopSearch(Exception):
    """Stop pressed: the running trial is marked failed and the study is left resumable."""


class _Pruning(Callback):
    """Reports each epoch's score to the trial; a trial the pruner gives up on stops like a stop request."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric, self.pruned_at = trial, metric, 0

    def on_epoch_end(self, state: State, row: dict[str, Any], confusion) -> None:
        value = row.get(self.metric)
        if value is None:
            return
        self.trial.report(value, state.epoch)
        if self.trial.should_prune():
            self.pruned_at = state.epoch
            raise StopTraining(f"pruned after epoch {state.epoch}")


class _Quiet(Callback):
    """A trial's progress reaches the job, its per-fit chatter (weights, fast path) does not: once per search."""

    def __init__(self, inner: Callback):
        self.inner = inner

    def on_fit_start(self, state, info):
        self.inner.on_fit_start(state, info)

    def on_epoch_start(self, state):
        self.inner.on_epoch_start(state)

    def on_batch_end(self, state):
        self.inner.on_batch_end(state)

    def on_epoch_end(self, state, row, confusion):
        self.inner.on_epoch_end(state, row, confusion)


def create(base: RunConfig, search: SearchConfig, out_dir: Path) -> Path:
    """Write search.json for a new search (checked first: a bad space fails here, not in a worker). A space that
    varies what only the epoch loop uses (learning rate, epochs, ...) trains its trials with the loop, not with
    the head solver, which would ignore those values."""
    search.check()
    if base.optim.solver == "auto" and set(search.space) & spaces.LOOP_ONLY:
        base = copy.deepcopy(base)
        base.optim.solver = "loop"
    for name, spec in search.space.items():  # every choice and both ends of every range make a config that runs
        for value in spec.get("choices") or (spec["low"], spec["high"]):
            try:
                check_config(spaces.apply(base, {name: value}))
            except ValueError as exc:
                raise ConfigError(f"'{name}' = {value!r} cannot be trained: {exc}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(out_dir / SEARCH_FILE, {"search": search.to_dict(), "config": base.to_dict(), "status": "created",
                                            "elapsed": 0.0})
    return out_dir


def load(out_dir: Path) -> tuple[RunConfig, SearchConfig, dict[str, Any]]:
    doc = runs.read_json(Path(out_dir) / SEARCH_FILE)
    if not doc:
        raise FileNotFoundError(f"{out_dir} is not a search folder: it has no {SEARCH_FILE}.")
    return RunConfig.from_dict(doc["config"]), SearchConfig.from_dict(doc["search"]), doc


def sampler(search: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(spaces.grid(search.space, search.grid_points), seed=seed)
    return {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}[search.sampler](seed=seed)


def open_study(out_dir: Path, search: SearchConfig, base: RunConfig, worker: int = 0) -> optuna.Study:
    """Create the study, or load it when it exists (a resumed search, or another worker's). The sampler's seed
    moves on with the trials the study holds and the worker's number: a resumed search or a second worker that
    replayed the first one's draws would spend its trials on points already tried."""
    storage = search.storage or JournalStorage(JournalFileBackend(str(Path(out_dir) / JOURNAL)))
    epochs = int(search.space.get("optim.epochs", {}).get("high", base.optim.epochs))
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2)),
              "none": optuna.pruners.NopPruner}[search.pruner]()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, sampler=sampler(search, search.seed), pruner=pruner,
                                load_if_exists=True, study_name=search.study or Path(out_dir).resolve().name,
                                direction="minimize" if search.metric == "val_loss" else "maximize")
    known = len(study.get_trials(deepcopy=False))
    if known or worker:
        study.sampler = sampler(search, search.seed + known + 104_729 * worker)
    return study


def run(out_dir: Path, callbacks: Sequence[Callback] = (), stop_event: threading.Event | None = None,
        dataset: Dataset | None = None, worker: int = 0) -> dict[str, Any]:
    """Run trials until the study holds the budget, the minutes are spent, or Stop; returns the summary.

    The minutes are a hard budget: a trial still running when they end is cut short (and marked failed, with
    the reason), instead of the search overrunning by a whole fine-tune."""
    out_dir = Path(out_dir)
    base, search, doc = load(out_dir)
    stop_event = stop_event or threading.Event()
    cb = Callbacks(list(callbacks))
    dataset = dataset or load_dataset(base.data.source, workspace_root(), base.data)
    study = open_study(out_dir, search, base, worker)
    _fail_abandoned(study)
    done = _count(study)
    left = search.budget - done
    clock = _Clock(doc.get("elapsed", 0.0))
    seconds = search.minutes * 60 - clock.before if search.minutes else None
    if left <= 0 or (seconds is not None and seconds <= 0):
        return summarize(out_dir, study, clock, status="finished", importances=True)
    if done:
        cb.on_message(f"Resuming the search: {done} trials done, {left} to go.")
    out_of_time = threading.Event()
    timer = threading.Timer(seconds, lambda: (out_of_time.set(), stop_event.set())) if seconds else None
    objective = _Objective(out_dir, base, search, dataset, cb, stop_event, study, out_of_time)
    watch = _Watch(stop_event, cb)
    if timer:
        timer.start()
    try:
        study.optimize(objective, n_trials=left, catch=TRIAL_ERRORS,
                       callbacks=[optuna.study.MaxTrialsCallback(search.budget, states=FINISHED),
                                  lambda s, t: summarize(out_dir, s, clock), watch])
    except StopSearch:
        pass
    finally:
        if timer:
            timer.cancel()
    status = ("failed" if watch.hopeless else "finished" if out_of_time.is_set() or not stop_event.is_set()
              else "stopped")
    return summarize(out_dir, study, clock, status=status, importances=True, error=watch.hopeless)


class _Watch:
    """After each trial: stop at once when Stop was pressed between trials, and give up when the first trials
    of this session all failed (the data, a weights file or a setting is wrong, not the sampled values)."""

    def __init__(self, stop_event: threading.Event, cb: Callback, give_up_after: int = 3):
        self.stop_event, self.cb, self.give_up_after = stop_event, cb, give_up_after
        self.seen, self.failed, self.hopeless = 0, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.seen += 1
        self.failed += trial.state == TrialState.FAIL and "error" in trial.user_attrs
        if self.failed == self.seen == self.give_up_after:
            self.hopeless = (f"The first {self.seen} trials all failed, so the search stopped: "
                             f"{trial.user_attrs['error']}")
            self.cb.on_message(self.hopeless, "error")
            study.stop()
        elif self.stop_event.is_set():
            study.stop()


@dataclass
class _Clock:
    """Search time over every session of a resumed search, for the minutes budget."""
    before: float
    started: float = field(default_factory=time.time)

    @property
    def elapsed(self) -> float:
        return self.before + time.time() - self.started


def run_workers(out_dir: Path, callbacks: Sequence[Callback] = (), stop_event: threading.Event | None = None,
                dataset: Dataset | None = None) -> dict[str, Any]:
    """`workers` processes on this machine against the one study: this one, and workers - 1 more started here
    (`python -m core search --join DIR`, in this process group, so a kill of the job reaches them too)."""
    out_dir = Path(out_dir)
    _, search, _ = load(out_dir)
    stop_event = stop_event or threading.Event()
    with open(out_dir / "workers.log", "ab") as log:
        extra = [subprocess.Popen([sys.executable, "-m", "core", "search", "--join", str(out_dir), "--worker", str(i)],
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                 for i in range(1, search.workers)]
    try:
        summary = run(out_dir, callbacks, stop_event, dataset)
    finally:
        for proc in extra:
            if stop_event.is_set():
                proc.terminate()
        for proc in extra:
            proc.wait()
    if extra:  # the others may have finished trials after this one's last summary
        base, search, doc = load(out_dir)
        summary = summarize(out_dir, open_study(out_dir, search, base), _Clock(doc.get("elapsed", 0.0)),
                            status=summary["status"], importances=True)
    return summary


class _Objective:
    def __init__(self, out_dir: Path, base: RunConfig, search: SearchConfig, dataset: Dataset, cb: Callback,
                 stop_event: threading.Event, study: optuna.Study, out_of_time: threading.Event):
        self.out_dir, self.base, self.search, self.dataset = out_dir, base, search, dataset
        self.cb, self.stop_event, self.study, self.out_of_time = cb, stop_event, study, out_of_time

    def __call__(self, trial: optuna.Trial) -> float:
        if self.stop_event.is_set():
            raise StopSearch
        trial.set_user_attr("worker", _worker_id())
        params = spaces.suggest(trial, self.search.space)
        config = spaces.apply(self.base, params)
        config.early_stop.monitor = self.search.metric
        self.cb.on_stage(_count(self.study) + 1, self.search.budget, f"trial {trial.number}")
        pruning = _Pruning(trial, self.search.metric)
        trial_dir = self.out_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("dir", str(trial_dir))
        started = time.perf_counter()
        try:  # the live view sees each epoch before the pruner may end the trial on it
            result = fit(config, trial_dir, [_Quiet(self.cb), pruning], self.stop_event, dataset=self.dataset,
                         save_model=False)
        except TRIAL_ERRORS as exc:
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        if pruning.pruned_at:
            trial.set_user_attr("pruned_at", pruning.pruned_at)
            raise optuna.TrialPruned()
        if result.status == "stopped":
            trial.set_user_attr("error", "cut short: the time budget ran out" if self.out_of_time.is_set()
                                else "cut short by Stop")
            raise StopSearch
        value = result.best.get(self.search.metric)
        if value is None:
            error = f"The trial has no {self.search.metric}: the data needs a validation split to search."
            trial.set_user_attr("error", error)
            raise ConfigError(error)
        return float(value)


def summarize(out_dir: Path, study: optuna.Study, clock: _Clock, status: str = "running",
              importances: bool = False, error: str = "") -> dict[str, Any]:
    """Rewrite trials.json and search.json's results from the study (every worker's trials)."""
    out_dir = Path(out_dir)
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(t) for t in trials]
    runs.write_json(out_dir / TRIALS_FILE, rows)
    doc = runs.read_json(out_dir / SEARCH_FILE, {})
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    doc |= {"status": status, "trials": sum(t.state in FINISHED for t in trials),
            "completed": len(complete), "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "study": study.study_name,
            "best_value": best.value if best else None, "best_params": best.params if best else None,
            "best_trial": best.number if best else None, "elapsed": clock.elapsed,
            "best_run": study.user_attrs.get("best_run"), "error": error or None}
    if len(complete) >= 2 and (importances or len(complete) % IMPORTANCE_EVERY == 0):
        doc["importances"] = param_importances(study)
    runs.write_json(out_dir / SEARCH_FILE, doc)
    return doc


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's default importance evaluator (PED-ANOVA in Optuna 5: fast, no forest to fit); {} while there are
    too few completed trials. Its warning that all importances are equal is what the chart then shows."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "seconds": t.duration.total_seconds() if t.duration else t.user_attrs.get("seconds"),
            "epochs": t.user_attrs.get("epochs"), "pruned_at": t.user_attrs.get("pruned_at"),
            "worker": t.user_attrs.get("worker"), "dir": t.user_attrs.get("dir"), "error": t.user_attrs.get("error"),
            "intermediate": {int(k): v for k, v in t.intermediate_values.items()}}


def best_config(out_dir: Path) -> RunConfig:
    """The base config with the best trial's values: trained as a run, it repeats the trial (same seeds)."""
    base, search, doc = load(out_dir)
    if not doc.get("best_params"):
        raise ValueError("No trial has completed yet, so there is no best trial to train.")
    config = spaces.apply(base, doc["best_params"])
    config.early_stop.monitor = search.metric
    return config


def extend(out_dir: Path, trials: int | None = None, minutes: float | None = None) -> None:
    """A resumed search with a bigger budget (what is given; the rest stays)."""
    base, search, doc = load(out_dir)
    search.trials = trials if trials is not None else search.trials
    search.minutes = minutes if minutes is not None else search.minutes
    search.check()
    runs.write_json(Path(out_dir) / SEARCH_FILE, doc | {"search": search.to_dict()})


def record_best_run(out_dir: Path, run: Path | str) -> None:
    """In the study (workers rewrite search.json after every trial and would drop it there) and search.json."""
    base, search, doc = load(out_dir)
    open_study(out_dir, search, base).set_user_attr("best_run", str(run))
    runs.write_json(Path(out_dir) / SEARCH_FILE, doc | {"best_run": str(run)})


def _count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _worker_id() -> str:
    """host:pid:start time, so a later process on this host can tell a dead worker's trial from a live one's."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start_time(os.getpid())}"


def _fail_abandoned(study: optuna.Study) -> None:
    """Trials left running by a process of this host that is gone (killed, or a restart) are failed: the sampler
    ignores them, and the budget does not count them."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        name, _, rest = worker.partition(":")
        pid, _, started = rest.partition(":")
        if name == host and pid.isdigit() and process_start_time(int(pid)) != started:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
