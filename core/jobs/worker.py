"""The worker process: `python -m core worker JOB_DIR` runs one job of the app, away from the server.

JOB_DIR/job.json says what to run ({"kind": "train" | "lr-find", "config": {...}, "resume": bool, "steps": int}).
The worker owns torch's process-wide state (threads, seeds), reports through JOB_DIR/events.jsonl and ends
with an "end" event. Stop arrives as SIGTERM or SIGINT, or as the file JOB_DIR/stop (for a server that is not
the worker's parent); the engine then stops within one batch, also while features are computed.
"""
from __future__ import annotations

import signal
import threading
import traceback
from pathlib import Path

from core.config import RunConfig
from core.data.images import ImageError
from core.data.sources import DataError
from core.jobs.events import EventWriter
from core.jobs.job import JOB_FILE, STOP_FILE
from core.models.weights import WeightsError
from core.runs import read_json
from core.train.callbacks import State
from core.train.engine import TrainingDiverged, fit, lr_find

def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM or a first Ctrl-C asks for a clean stop within one batch; a second Ctrl-C interrupts at once."""
    def handler(signum: int, frame) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def watch_stop_file(path: Path, stop: threading.Event, every_s: float = 0.2) -> None:
    def watch() -> None:
        while not stop.wait(every_s):
            if path.exists():
                stop.set()

    threading.Thread(target=watch, name="stop-file", daemon=True).start()


def failure_message(exc: BaseException) -> str:
    """A sentence for a person: our own errors already are one; anything else is named plainly."""
    if isinstance(exc, (DataError, WeightsError, ImageError, TrainingDiverged, ValueError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Training ran out of memory. Try a smaller batch size or image size."
    return f"Training failed unexpectedly ({type(exc).__name__}: {exc}). The details are in error.log in the run folder."


def run(job_dir: Path) -> int:
    job_dir = Path(job_dir)
    spec = read_json(job_dir / JOB_FILE)
    stop = threading.Event()
    stop_on_signals(stop)
    watch_stop_file(job_dir / STOP_FILE, stop)
    events = EventWriter(job_dir)
    try:
        config = RunConfig.from_dict(spec["config"])
        if spec["kind"] == "train":
            result = fit(config, job_dir, [events], stop, resume=bool(spec.get("resume")))
            events.emit("end", status=result.status, error=None, result=None)
        else:
            state = State(phase="lr-find")

            def step(done: int, total: int) -> None:
                state.batch, state.batches = done, total
                events.on_batch_end(state)

            found = lr_find(config, num_steps=int(spec.get("steps", 100)), stop_event=stop, on_step=step,
                            callbacks=[events])
            events.emit("end", status="stopped" if stop.is_set() else "finished", error=None, result=found.to_dict())
        return 0
    except KeyboardInterrupt:
        events.emit("end", status="stopped", error=None, result=None)
        return 130
    except Exception as exc:  # the run folder and the page say why; the traceback goes to error.log
        (job_dir / "error.log").write_text(traceback.format_exc())
        events.emit("end", status="failed", error=failure_message(exc), result=None)
        return 1
    finally:
        events.close()
