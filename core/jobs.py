"""Background training jobs: one thread per job, a queue, and immutable snapshots for the pages.

The worker writes into its Job under a lock (through a Callback); a page only ever reads a Snapshot, a
frozen copy, so a rerun, a reload or a second tab can never see half an update or disturb training.
Finished jobs are evicted from memory after a while; their run folders stay on disk.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .callbacks import Callback, State
from .config import RunConfig

ACTIVE = ("queued", "running")
MAX_BATCH_POINTS = 4000  # per-batch losses kept for the live curve; halved by thinning when exceeded
MAX_MESSAGES = 200


@dataclass(frozen=True)
class Snapshot:
    id: str
    status: str  # queued | running | finished | stopped | failed
    run_dir: Path
    config: dict[str, Any]
    phase: str = ""  # features | train | val
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    history: tuple[dict[str, Any], ...] = ()
    batch_losses: tuple[tuple[float, float], ...] = ()  # (epoch position, loss)
    confusion: tuple[tuple[int, ...], ...] | None = None
    classes: tuple[str, ...] = ()
    groups: tuple[dict[str, Any], ...] = ()
    weights: dict[str, Any] = field(default_factory=dict)
    messages: tuple[tuple[float, str, str], ...] = ()  # (time, level, text)
    error: str | None = None
    best_epoch: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    queue_position: int = 0  # 1 = next to start

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def progress(self) -> float:
        """Share of the planned epochs done, 0..1."""
        if self.status in ("finished",):
            return 1.0
        if not self.epochs or not self.epoch:
            return 0.0
        within = self.batch / self.batches if self.batches and self.phase == "train" else 1.0 if self.phase == "val" else 0.0
        return min(1.0, (self.epoch - 1 + within) / self.epochs)

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.time()) - self.started_at

    @property
    def eta(self) -> float | None:
        """Seconds left, from the pace so far; None until there is a pace to go by."""
        p = self.progress
        if not self.active or p <= 0.01:
            return None
        return self.elapsed * (1 - p) / p


class Job:
    def __init__(self, job_id: str, config: RunConfig, run_dir: Path):
        self.id, self.config, self.run_dir = job_id, config, run_dir
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._status = "queued"
        self._state = State()
        self._history: list[dict[str, Any]] = []
        self._batches: list[tuple[float, float]] = []
        self._confusion: list[list[int]] | None = None
        self._info: dict[str, Any] = {}
        self._messages: deque[tuple[float, str, str]] = deque(maxlen=MAX_MESSAGES)
        self._error: str | None = None
        self._times: dict[str, float | None] = {"started": None, "ended": None}

    def snapshot(self, queue_position: int = 0) -> Snapshot:
        with self._lock:
            s = self._state
            return Snapshot(
                id=self.id, status=self._status, run_dir=self.run_dir, config=self.config.to_dict(),
                phase=s.phase if self._status == "running" else "", epoch=s.epoch, epochs=self.config.optim.epochs,
                batch=s.batch, batches=s.batches, history=tuple(dict(r) for r in self._history),
                batch_losses=tuple(self._batches),
                confusion=tuple(tuple(r) for r in self._confusion) if self._confusion else None,
                classes=tuple(self._info.get("classes", ())), groups=tuple(self._info.get("groups", ())),
                weights=dict(self._info.get("weights", {})), messages=tuple(self._messages), error=self._error,
                best_epoch=s.best_epoch, started_at=self._times["started"],
                ended_at=self._times["ended"], queue_position=queue_position,
            )

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self, fit_kwargs: dict[str, Any]) -> None:
        from .engine import fit  # the registry is imported by the app at start-up; torch models load on demand

        with self._lock:
            if self.stop_event.is_set():  # cancelled while queued
                self._status, self._times["ended"] = "stopped", time.time()
                return
            self._status, self._times["started"] = "running", time.time()
        try:
            result = fit(self.config, self.run_dir, [_JobCallback(self)], self.stop_event, **fit_kwargs)
            status, error = result.status, None
        except Exception as exc:  # a failed job must say why, and leave the app usable
            status, error = "failed", failure_message(exc)
            (self.run_dir / "error.log").write_text(traceback.format_exc())
        with self._lock:
            self._status, self._error, self._times["ended"] = status, error, time.time()
            if error:
                self._messages.append((time.time(), "error", error))


def failure_message(exc: Exception) -> str:
    """A sentence for a person: our own errors already are one; anything else is named plainly."""
    from .engine import TrainingDiverged
    from .images import ImageError
    from .sources import DataError
    from .weights import WeightsError

    if isinstance(exc, (DataError, WeightsError, ImageError, TrainingDiverged, ValueError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Training ran out of memory. Try a smaller batch size or image size."
    return f"Training failed unexpectedly ({type(exc).__name__}: {exc}). The details are in error.log in the run folder."


class _JobCallback(Callback):
    def __init__(self, job: Job):
        self.job = job

    def on_fit_start(self, state: State, info: dict[str, Any]) -> None:
        with self.job._lock:
            self.job._info = dict(info)
            self.job._history = list(state.history)  # a resumed run starts with its past epochs

    def on_batch_end(self, state: State) -> None:
        with self.job._lock:
            self.job._state = State(**{**state.__dict__, "history": []})
            if state.phase == "train" and state.batches:
                points = self.job._batches
                points.append((state.epoch - 1 + state.batch / state.batches, state.batch_loss))
                if len(points) > MAX_BATCH_POINTS:
                    del points[::2]

    def on_epoch_start(self, state: State) -> None:
        self.on_batch_end(State(**{**state.__dict__, "batch": 0, "phase": "train"}))

    def on_epoch_end(self, state: State, row: dict[str, Any], confusion: list[list[int]] | None) -> None:
        with self.job._lock:
            self.job._history.append(dict(row))
            if confusion is not None:
                self.job._confusion = confusion
            self.job._state = State(**{**state.__dict__, "history": []})

    def on_message(self, text: str, level: str = "info") -> None:
        with self.job._lock:
            self.job._messages.append((time.time(), level, text))


class JobRegistry:
    """All sessions share one registry: a queue, `max_running` jobs at a time, finished jobs evicted."""

    def __init__(self, runs_root: Path, max_running: int = 1, keep_finished: int = 20, threads: int | None = None):
        self.runs_root = Path(runs_root)
        self.max_running = max_running
        self.keep_finished = keep_finished
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)  # leave the server a core's share
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._fit_kwargs: dict[str, dict[str, Any]] = {}
        self._running: set[str] = set()  # started by the registry and not yet returned

    def submit(self, config: RunConfig, resume_dir: Path | None = None, **fit_kwargs: Any) -> str:
        """Queue a run (or the resumption of one); returns its id, which is also its run folder's name."""
        if not config.threads:
            config.threads = self.threads
        if resume_dir is not None:
            job_id, fit_kwargs = Path(resume_dir).name, fit_kwargs | {"resume": True}
        else:
            job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        job = Job(job_id, config, Path(resume_dir) if resume_dir else self.runs_root / job_id)
        with self._lock:
            self._jobs[job_id] = job
            self._queue.append(job_id)
            self._fit_kwargs[job_id] = fit_kwargs
        self._start_next()
        return job_id

    def snapshot(self, job_id: str) -> Snapshot | None:
        with self._lock:
            job = self._jobs.get(job_id)
            position = self._queue.index(job_id) + 1 if job_id in self._queue else 0
        return job.snapshot(position) if job else None

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            ids = list(self._jobs)
        return [s for s in (self.snapshot(i) for i in ids) if s is not None]

    def active(self) -> list[Snapshot]:
        return [s for s in self.snapshots() if s.active]

    def stop(self, job_id: str) -> None:
        """Stop a running job within one batch; a queued one never starts."""
        with self._lock:
            job = self._jobs.get(job_id)
            queued = job_id in self._queue
            if queued:
                self._queue.remove(job_id)
                self._fit_kwargs.pop(job_id, None)
        if job is None:
            return
        job.stop()
        if queued:
            job._run({})  # sees the stop before training: marks it stopped

    def _start_next(self) -> None:
        with self._lock:
            while self._queue and len(self._running) < self.max_running:
                job = self._jobs[self._queue.pop(0)]
                self._running.add(job.id)
                kwargs = self._fit_kwargs.pop(job.id, {})
                threading.Thread(target=self._work, args=(job, kwargs), name=f"job-{job.id}", daemon=True).start()

    def _work(self, job: Job, kwargs: dict[str, Any]) -> None:
        try:
            job._run(kwargs)
        finally:
            with self._lock:
                self._running.discard(job.id)
                self._evict()
            self._start_next()

    def _evict(self) -> None:
        done = [j for j in self._jobs.values() if j.id not in self._running and j.id not in self._queue]
        done.sort(key=lambda j: j._times["ended"] or 0)
        for job in done[: max(0, len(done) - self.keep_finished)]:
            del self._jobs[job.id]
