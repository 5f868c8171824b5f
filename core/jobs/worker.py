"""The worker process: `python -m core worker JOB_DIR` runs one job of the app, away from the server.

JOB_DIR/job.json says what to run ({"kind": "train" | "lr-find" | "search" | "cv" | "leakage" | "ensemble",
"config": {...}, "resume": bool, "steps": int}); a search reads the rest from
JOB_DIR/search.json, a cross-validation from config.data.folds, an ensemble from JOB_DIR/ensemble.json.
The worker owns torch's process-wide state (threads, seeds), reports through JOB_DIR/events.jsonl and ends
with an "end" event. Stop arrives as SIGTERM or SIGINT, or as the file JOB_DIR/stop (for a server that is not
the worker's parent); the engine then stops within one batch, also while features are computed.

A training job may run as N processes under torchrun (the supervisor starts it so, launch.py): every process runs
this same entry, rank 0 alone writes events, and a process restarted by torchrun resumes from the checkpoint.
"""
from __future__ import annotations

import signal
import threading
import traceback
from pathlib import Path

from core.config import RunConfig
from core.data.images import ImageError
from core.data.sources import DataError
from core.deploy import ensemble_export
from core.evaluate import ensemble, leakage
from core.experiments import crossval, search
from core.jobs.events import EventWriter
from core.jobs.job import JOB_FILE, STOP_FILE
from core.models.weights import WeightsError
from core.runs import read_json, write_json
from core.processes import die_with_parent, in_torchrun_group
from core.train import distributed
from core.train.callbacks import State, StopTraining
from core.train.engine import TrainingDiverged, dataset_features, fit, lr_find

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


def build_ensemble(folder: Path, events: EventWriter, stop: threading.Event) -> str:
    """Score the ensemble on its members' shared held-out images, then build and check both graphs; a stop keeps
    what is built, and a resume builds only what is missing. A graph that cannot be made (members that resize
    differently share no input) is recorded with the reason: the ensemble still scores and predicts."""
    ensemble.evaluate(folder)
    unavailable = {}
    for i, fmt in enumerate(ensemble_export.EXPORT_FILES, 1):
        if stop.is_set():
            return "stopped"
        events.on_stage(i, len(ensemble_export.EXPORT_FILES), f"{fmt} export")
        if not (folder / "exports" / ensemble_export.EXPORT_FILES[fmt]).is_file():
            try:
                ensemble_export.build(folder, fmt)
            except ensemble_export.ExportError as exc:
                unavailable[fmt] = str(exc)
                events.on_message(f"No {fmt} graph: {exc}", "warning")
    (folder / "exports").mkdir(exist_ok=True)
    write_json(folder / ensemble_export.UNAVAILABLE, unavailable)
    return "finished"


def run(job_dir: Path) -> int:
    job_dir = Path(job_dir)
    spec = read_json(job_dir / JOB_FILE)
    stop = threading.Event()
    stop_on_signals(stop)
    watch_stop_file(job_dir / STOP_FILE, stop)
    if in_torchrun_group():
        die_with_parent()  # torchrun gone (killed): stop, rather than train on unsupervised
    events = EventWriter(job_dir if distributed.is_main() else None)
    try:
        config = RunConfig.from_dict(spec["config"])
        kind, resume = spec["kind"], bool(spec.get("resume"))
        resume = resume or distributed.resumes(job_dir)
        if kind == "train":
            result = fit(config, job_dir, [events], stop, resume=resume)
            events.emit("end", status=result.status, error=None, result=None)
        elif kind == "search":
            summary = search.run_workers(job_dir, [events], stop)
            events.emit("end", status=summary["status"], error=None, result=None)
        elif kind == "cv":
            summary = crossval.cross_validate(config, job_dir, [events], stop, resume=resume)
            events.emit("end", status=summary["status"], error=None, result=None)
        elif kind == "ensemble":
            status = build_ensemble(job_dir, events, stop)
            events.emit("end", status=status, error=None, result=None)
        elif kind == "leakage":
            try:
                dataset, feats = dataset_features(config, callbacks=[events], stop_event=stop)
            except StopTraining:
                events.emit("end", status="stopped", error=None, result=None)
            else:
                leakage.write(job_dir, leakage.find(dataset, feats))
                events.emit("end", status="finished", error=None, result=None)
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
        return 0 if in_torchrun_group() else 130  # torchrun restarts a group whose process exits non-zero
    except Exception as exc:  # the run folder and the page say why; the traceback goes to error.log
        if distributed.is_main():
            (job_dir / "error.log").write_text(traceback.format_exc())
        if distributed.restarts_left():  # torchrun restarts every process; the job goes on
            events.on_message(f"A process failed ({failure_message(exc)}); torchrun restarts them all, resuming "
                              "from the last finished epoch.", "warning")
        else:
            events.emit("end", status="failed", error=failure_message(exc), result=None)
        return 1
    finally:
        events.close()
