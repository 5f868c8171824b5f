"""A job as the server knows it: the worker's events folded into state under a lock, read as frozen Snapshots.

The supervising thread writes; a page only ever reads a Snapshot, so a rerun, a reload or a second tab can
never see half an update.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig

ACTIVE = ("queued", "running")
MAX_BATCH_POINTS = 4000  # per-batch losses kept for the live curve; halved by thinning when exceeded
MAX_MESSAGES = 200
STOP_FILE = "stop"  # its presence asks the worker to stop
JOB_FILE = "job.json"  # what the worker runs


@dataclass(frozen=True)
class Snapshot:
    id: str
    status: str  # queued | running | finished | stopped | failed
    run_dir: Path  # the job's folder: a run folder for training
    config: dict[str, Any]
    kind: str = "train"  # train | lr-find | search | cv | leakage | ensemble
    phase: str = ""  # features | train | val | lr-find
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
    result: dict[str, Any] | None = None  # what a job that is not training returns (the LR finder's curve)
    best_epoch: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    queue_position: int = 0  # 1 = next to start
    pid: int | None = None
    stage: tuple[int, int, str] | None = None  # (index, total, label) of a job made of fits: trial 3, fold 2 of 5

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def progress(self) -> float:
        """Share of the planned work done, 0..1."""
        if self.status == "finished":
            return 1.0
        if self.kind in ("lr-find", "leakage"):  # one sweep, or features computed once: batches are the work
            return self.batch / self.batches if self.batches else 0.0
        fit = 0.0
        if self.epochs and self.epoch:
            within = (self.batch / self.batches if self.batches and self.phase in ("train", "solve") else
                      1.0 if self.phase == "val" else 0.0)
            fit = min(1.0, (self.epoch - 1 + within) / self.epochs)
        if self.stage:
            index, total, _ = self.stage
            return min(1.0, (index - 1 + fit) / max(total, 1))
        return fit

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
    def __init__(self, job_id: str, kind: str, config: RunConfig, job_dir: Path, resume: bool = False,
                 steps: int = 0):
        self.id, self.kind, self.config, self.dir = job_id, kind, config, Path(job_dir)
        self.resume, self.steps = resume, steps
        self.user = ""  # who started it, on a shared server (their job quota)
        self.home: Path | None = None  # its project's workspace, on a shared server (the worker's FTLAB_HOME)
        self._lock = threading.Lock()
        self._status = "queued"
        self._progress: dict[str, Any] = {}
        self._history: list[dict[str, Any]] = []
        self._batches: list[tuple[float, float]] = []
        self._confusion: list[list[int]] | None = None
        self._info: dict[str, Any] = {}
        self._messages: deque[tuple[float, str, str]] = deque(maxlen=MAX_MESSAGES)
        self._error: str | None = None
        self._result: dict[str, Any] | None = None
        self._times: dict[str, float | None] = {"started": None, "ended": None}
        self._pid: int | None = None
        self._said_end: dict[str, Any] | None = None
        self._stage: tuple[int, int, str] | None = None
        self.stop_requested_at: float | None = None

    @property
    def best_epoch(self) -> int:
        return self._progress.get("best_epoch", 0)

    @property
    def ended_at(self) -> float:
        return self._times["ended"] or 0.0

    def snapshot(self, queue_position: int = 0) -> Snapshot:
        with self._lock:
            s = self._progress
            return Snapshot(
                id=self.id, status=self._status, run_dir=self.dir, config=self.config.to_dict(), kind=self.kind,
                phase=s.get("phase", "") if self._status == "running" else "", epoch=s.get("epoch", 0),
                epochs=s.get("epochs") or self.config.optim.epochs, batch=s.get("batch", 0), batches=s.get("batches", 0),
                history=tuple(dict(r) for r in self._history), batch_losses=tuple(self._batches),
                confusion=tuple(tuple(r) for r in self._confusion) if self._confusion else None,
                classes=tuple(self._info.get("classes", ())), groups=tuple(self._info.get("groups", ())),
                weights=dict(self._info.get("weights", {})), messages=tuple(self._messages), error=self._error,
                result=self._result, best_epoch=s.get("best_epoch", 0), started_at=self._times["started"],
                ended_at=self._times["ended"], queue_position=queue_position, pid=self._pid, stage=self._stage,
            )

    def attached(self, pid: int) -> None:
        with self._lock:
            self._status, self._pid = "running", pid
            self._times["started"] = self._times["started"] or time.time()
        if self.stop_requested_at:  # Stop pressed while the worker was starting
            self._signal()

    def apply(self, events: list[dict[str, Any]]) -> None:
        """Fold worker events (see events.py) into the job."""
        if not events:
            return
        with self._lock:
            for ev in events:
                kind = ev["e"]
                if kind == "state":
                    self._progress = {k: ev[k] for k in ("epoch", "epochs", "batch", "batches", "phase", "best_epoch")}
                    self._batches.extend(tuple(p) for p in ev["points"])
                    if len(self._batches) > MAX_BATCH_POINTS:
                        del self._batches[::2]
                elif kind == "fit_start":
                    self._info, self._history = ev["info"], list(ev["history"])
                elif kind == "epoch":
                    self._history.append(ev["row"])
                    self._confusion = ev["confusion"] or self._confusion
                    self._progress["best_epoch"] = ev["best_epoch"]
                elif kind == "stage":  # the next fit of a search or cross-validation: its own curves
                    self._stage = (ev["index"], ev["total"], ev["label"])
                    self._batches, self._confusion, self._history, self._progress = [], None, [], {}
                elif kind == "message":
                    self._messages.append((ev["t"], ev["level"], ev["text"]))
                elif kind == "end":  # takes effect when the process has exited (see close)
                    self._said_end = ev

    @property
    def ended_by_worker(self) -> bool:
        return self._said_end is not None

    def close(self) -> None:
        """The worker process has exited after its end event: the job ends as it said."""
        with self._lock:
            ev = self._said_end
            self._end(ev["status"], ev.get("error"), ev.get("t"))
            self._result = ev.get("result")

    def end(self, status: str, error: str | None = None) -> None:
        with self._lock:
            self._end(status, error, None)

    def _end(self, status: str, error: str | None, when: float | None) -> None:
        self._status, self._error, self._times["ended"] = status, error, when or time.time()
        if error:
            self._messages.append((time.time(), "error", error))

    def request_stop(self) -> None:
        """A signal now, and a stop file for a worker this server cannot signal; the supervisor kills it after a
        grace period."""
        self.stop_requested_at = self.stop_requested_at or time.time()
        (self.dir / STOP_FILE).touch()
        self._signal()

    def _signal(self) -> None:
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
