"""The worker's event stream: one JSON object per line in JOB_DIR/events.jsonl.

A file, not a pipe, so a server started later (after a restart) can read a running worker's whole story and
follow it from there. The worker appends; the supervising thread reads from an offset. Kinds, in `e`:
fit_start (info, history), state (progress, with the batch losses since the last state), epoch (row, confusion),
message (level, text), stage (index, total, label: which fit of a search or cross-validation), end (status, error,
result).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from core.runs import finite
from core.train.callbacks import Callback, State

EVENTS = "events.jsonl"
STATE_EVERY_S = 0.2  # batch progress is written at most this often; every loss point still travels


class EventWriter(Callback):
    """Turns the engine's callbacks into lines of events.jsonl, flushed as they happen."""

    def __init__(self, job_dir: Path | None):
        """job_dir None: events go nowhere (torchrun's processes other than rank 0)."""
        self._file = open(Path(job_dir) / EVENTS if job_dir else os.devnull, "a", encoding="utf-8")
        self._points: list[tuple[float, float]] = []
        self._last = 0.0

    def emit(self, kind: str, **data: Any) -> None:
        self._file.write(json.dumps(finite({"e": kind, "t": time.time(), **data})) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def on_fit_start(self, state: State, info: dict[str, Any]) -> None:
        self.emit("fit_start", info=info, history=state.history)

    def on_epoch_start(self, state: State) -> None:
        self._state(state, force=True)

    def on_batch_end(self, state: State) -> None:
        if state.phase == "train" and state.batches:
            self._points.append((state.epoch - 1 + state.batch / state.batches, state.batch_loss))
        self._state(state, force=state.batch >= state.batches)

    def on_epoch_end(self, state: State, row: dict[str, Any], confusion: list[list[int]] | None) -> None:
        self._state(state, force=True)
        self.emit("epoch", row=row, confusion=confusion, best_epoch=state.best_epoch)

    def on_message(self, text: str, level: str = "info") -> None:
        self.emit("message", level=level, text=text)

    def on_stage(self, index: int, total: int, label: str) -> None:
        self.emit("stage", index=index, total=total, label=label)

    def _state(self, state: State, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < STATE_EVERY_S:
            return
        self._last = now
        self.emit("state", epoch=state.epoch, epochs=state.epochs, batch=state.batch, batches=state.batches,
                  phase=state.phase, best_epoch=state.best_epoch, points=self._points)
        self._points = []


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete lines from `offset` on, and the offset after them (a half-written last line waits)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash mid-write: skip it, keep the rest
            continue
    return events, offset + end
