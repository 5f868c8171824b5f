"""The supervising thread: starts a worker process (or re-attaches to one), folds its events into the Job,
and turns how the process ended into the job's status.

Workers (forked by forkserver.py, with torch imported) run in their own session (process group), so they outlive
the server: a Ctrl-C on `make run` or a crash of the server leaves training running, and the next server
re-attaches from the job folder (JOB_DIR/worker.json holds the pid and the process's start time, so a reused pid
is never mistaken for it).
A training job on several processes is torchrun (launch.py) starting the same worker entry N times: its pid is
torchrun's, which passes a stop on to its workers; a kill after the grace period takes the whole process tree.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from core.config import ROOT
from core.jobs.events import EVENTS, read_events
from core.jobs import forkserver, launch
from core.jobs.job import JOB_FILE, STOP_FILE, Job
from core.processes import kill_tree, process_start_time
from core.runs import read_json, write_json, write_status

WORKER_FILE = "worker.json"
POLL_S = 0.1


def grace_seconds() -> float:
    """How long a stopped worker may take before it is killed (FTLAB_STOP_GRACE)."""
    return float(os.environ.get("FTLAB_STOP_GRACE", "10"))


def live_worker(job_dir: Path) -> int | None:
    """The pid of the worker still running this job folder, if any."""
    info = read_json(Path(job_dir) / WORKER_FILE)
    if not info:
        return None
    started = process_start_time(info["pid"])
    return info["pid"] if started is not None and started == info.get("started") else None


def start_worker(job: Job) -> subprocess.Popen | forkserver.Child:
    """`python -m core worker JOB_DIR`: forked from the fork server, or under torchrun on several processes."""
    write_json(job.dir / JOB_FILE, {"kind": job.kind, "config": job.config.to_dict(), "resume": job.resume,
                                    "steps": job.steps, "user": job.user})
    for stale in (EVENTS, STOP_FILE):
        (job.dir / stale).unlink(missing_ok=True)
    d = job.config.distributed
    torchrun = job.kind == "train" and launch.needs_torchrun(d)
    env = launch.environment(job.config) if torchrun else dict(os.environ)
    if job.home is not None:  # a project's job reads and writes that project's workspace only
        env["FTLAB_HOME"] = str(job.home)
    if torchrun:
        with open(job.dir / "worker.log", "ab") as log:
            proc = subprocess.Popen(launch.torchrun(d, job.id) + ["-m", "core", "worker", str(job.dir)], cwd=ROOT,
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    else:
        proc = forkserver.spawn(job.dir, env, job.dir / "worker.log")
    write_json(job.dir / WORKER_FILE, {"pid": proc.pid, "started": process_start_time(proc.pid), "kind": job.kind})
    return proc


class Supervisor(threading.Thread):
    """One per running job. `proc` is None when re-attaching to a worker that an earlier server started."""

    def __init__(self, job: Job, on_exit: Callable[[Job], None], pid: int | None = None):
        super().__init__(name=f"supervise-{job.id}", daemon=True)
        self.job, self.on_exit, self.pid = job, on_exit, pid
        self.proc: subprocess.Popen | forkserver.Child | None = None

    def run(self) -> None:
        job = self.job
        try:
            if self.pid is None:
                self.proc = start_worker(job)
                self.pid = self.proc.pid
            job.attached(self.pid)
            offset, killed = 0, False
            while True:
                events, offset = read_events(job.dir / EVENTS, offset)
                job.apply(events)
                code = self._exit_code()
                if code is not None:
                    job.apply(read_events(job.dir / EVENTS, offset)[0])
                    break
                asked = job.stop_requested_at
                if asked and not killed and time.time() - asked > grace_seconds():
                    kill_tree(self.pid)  # torchrun's workers live in sessions of their own
                    killed = True
                time.sleep(POLL_S)
            self._ended(code, killed)
        except Exception as exc:  # the supervisor itself must never leave a job "running" forever
            job.end("failed", f"The job could not be supervised: {type(exc).__name__}: {exc}")
        finally:
            self.on_exit(job)

    def _exit_code(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        return None if process_start_time(self.pid) is not None else 0

    def _ended(self, code: int, killed: bool) -> None:
        """The worker said how it ended (an end event), or it died: say so, and in the run folder too."""
        job = self.job
        if job.ended_by_worker:
            job.close()
            return
        if killed or (job.stop_requested_at and code == -signal.SIGTERM):  # stopped before its handler was set
            status = "stopped"
            error = (f"The training process did not stop within {grace_seconds():.0f} s and was killed; the weights "
                     "of its last finished epoch are kept and it can be resumed.") if killed else None
        elif code < 0:
            status = "failed"
            error = (f"The training process ended unexpectedly (signal {-code}): often out of memory; lower the batch "
                     "size or image size. It can be resumed from its last finished epoch.")
        else:
            status = "failed"
            error = (f"The training process ended unexpectedly (exit code {code}); its log is worker.log in the job "
                     "folder. It can be resumed from its last finished epoch.")
        # The run folder first: whoever sees the job ended finds its folder saying so too.
        if job.kind == "train" and (job.dir / "config.json").is_file():
            write_status(job.dir, status, error or "Stopped before training began.", best_epoch=job.best_epoch)
        job.end(status, error)
