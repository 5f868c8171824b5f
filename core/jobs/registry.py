"""The job registry every session shares: a queue, at most FTLAB_MAX_JOBS worker processes at once, snapshots.

A job is a process (worker.py), watched by a thread (supervisor.py); the server itself never trains, so a
crash or an out-of-memory kill in training leaves every session served. Finished jobs are evicted from memory
after a while; their folders stay on disk. A registry built after a server restart re-attaches to the workers
that are still running.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core import settings
from core.accounts import quotas
from core.accounts.projects import PROJECTS, home_of
from core.accounts.users import User
from core.config import DistributedConfig, RunConfig
from core.jobs.job import Job, Snapshot
from core.jobs.supervisor import WORKER_FILE, Supervisor, live_worker
from core.runs import CV_FILE, SEARCH_FILE, read_json

if TYPE_CHECKING:
    from core.experiments.search import SearchConfig


class JobError(ValueError):
    """A request the registry refuses, with the reason in a sentence."""


JOB_FOLDERS = {"lr-find": "lr-find", "search": "searches", "cv": "cv", "leakage": "leakage", "ensemble": "ensembles"}


def max_jobs() -> int:
    return max(1, int(os.environ.get("FTLAB_MAX_JOBS", "1")))


def job_roots(home: Path) -> dict[str, Path]:
    """Every kind of job has its folder beside the runs: sweeps, searches and cross-validations are not runs."""
    return {"train": Path(home) / "runs"} | {kind: Path(home) / name for kind, name in JOB_FOLDERS.items()}


class JobRegistry:
    """One queue and one set of workers for the whole server. On a shared server each session works through
    `for_project`: a view with the project's folders and the user's quotas, which sees only that project's jobs."""

    def __init__(self, runs_root: Path, max_running: int | None = None, keep_finished: int = 20,
                 threads: int | None = None):
        self.runs_root = Path(runs_root)
        self.home = self.runs_root.parent
        self.roots = job_roots(self.home)
        self.user: User | None = None  # in a project's view: who submits, and the project's owner
        self.owner: User | None = None
        self.scoped = False
        self.max_running = max_running or max_jobs()
        self.keep_finished = keep_finished
        # Each worker's share of the cores, fixed so a run computes the same alone or beside another job.
        self.threads = threads or max(1, settings.cpus() // self.max_running)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: list[str] = []
        self._running: set[str] = set()
        self._reattach()

    def for_project(self, home: Path, user: User, owner: User) -> "JobRegistry":
        """The same queue and workers (shared, not copied), this project's folders, the job quota of the user
        and the disk quota of the project's owner."""
        view = copy.copy(self)
        view.home, view.runs_root, view.roots = Path(home), Path(home) / "runs", job_roots(home)
        view.user, view.owner, view.scoped = user, owner, True
        return view

    def owns(self, folder: Path) -> bool:
        """Whether a job's folder (or a run or fold one names) belongs to this view's project."""
        return not self.scoped or home_of(folder) == self.home.resolve()

    def submit(self, config: RunConfig, resume_dir: Path | None = None) -> str:
        """Queue a run (or the resumption of one); returns its id, which is also its run folder's name. A run on
        several processes (config.distributed.nproc) runs under torchrun on this machine."""
        if config.distributed.nnodes > 1:
            raise JobError("A run on several machines starts on each of them (Train page > Several processes "
                           "and machines has the commands); from here it can use several processes of this machine.")
        if not config.threads:
            config.threads = self.threads
        if resume_dir is not None:
            self._check_owned(Path(resume_dir))
            job_id = Path(resume_dir).name
            with self._lock:
                known = self._jobs.get(job_id)
            if (known and known.snapshot().active) or live_worker(resume_dir):
                raise JobError(f"Run {job_id} is already running: stop it first, or follow it on the Train page.")
            job = Job(job_id, "train", config, Path(resume_dir), resume=True)
        else:
            job_id = _new_id()
            job = Job(job_id, "train", config, self.runs_root / job_id)
        return self._enqueue(job)

    def lr_find(self, config: RunConfig, steps: int = 100) -> str:
        """Queue a learning-rate sweep on exactly what `submit(config)` would train."""
        config = _one_process(config)
        if not config.threads:
            config.threads = self.threads
        job_id = _new_id()
        return self._enqueue(Job(job_id, "lr-find", config, self.roots["lr-find"] / job_id, steps=steps))

    def search(self, config: RunConfig, options: SearchConfig) -> str:
        """Queue a hyperparameter search around `config`; its folder (search.json) is written now, so a bad space
        is refused here, in the page, and never reaches a worker."""
        from core.experiments import search  # here: the registry, and so the app's first page, imports no torch

        config = _one_process(config)
        if not config.threads:
            config.threads = max(1, self.threads // options.workers)
        self._admit()
        job_id = _new_id()
        search.create(config, options, self.roots["search"] / job_id)
        return self._enqueue(Job(job_id, "search", config, self.roots["search"] / job_id))

    def cross_validate(self, config: RunConfig) -> str:
        """Queue a k-fold cross-validation (config.data.folds folds) of `config`."""
        if config.data.folds < 2:
            raise JobError("Cross-validation needs at least 2 folds.")
        config = _one_process(config)
        if not config.threads:
            config.threads = self.threads
        job_id = _new_id()
        return self._enqueue(Job(job_id, "cv", config, self.roots["cv"] / job_id))

    def near_duplicates(self, config: RunConfig) -> str:
        """Queue the near-duplicate check of config's dataset and split (backbone features, cached)."""
        config = _one_process(config)
        if not config.threads:
            config.threads = self.threads
        job_id = _new_id()
        return self._enqueue(Job(job_id, "leakage", config, self.roots["leakage"] / job_id))

    def resume(self, kind: str, job_dir: Path) -> str:
        """Continue a stopped or interrupted search or cross-validation from its folder."""
        job_dir = Path(job_dir)
        self._check_owned(job_dir)
        with self._lock:
            known = self._jobs.get(job_dir.name)
        if (known and known.snapshot().active) or live_worker(job_dir):
            raise JobError(f"{job_dir.name} is already running: stop it first, or follow it.")
        # job.json when the app started it; a search or cross-validation from the CLI has its config in its own file
        config = next((doc["config"] for name in ("job.json", SEARCH_FILE, CV_FILE)
                       if (doc := read_json(job_dir / name)) and "config" in doc), None)
        if config is None:
            raise JobError(f"{job_dir.name} cannot be resumed: it never started.")
        return self._enqueue(Job(job_dir.name, kind, RunConfig.from_dict(config), job_dir, resume=True))

    def ensemble(self, members: list[Path]) -> str:
        """Combine runs (or a cross-validation's folds) now, refusing mismatched classes here; the job then scores
        it and builds its TorchScript and ONNX graphs, each checked against the members."""
        from core.evaluate import ensemble

        self._admit()
        for member in members:
            self._check_owned(Path(member))
        job_id = _new_id()
        folder = self.roots["ensemble"] / job_id
        spec = ensemble.create(members, folder)
        config = RunConfig.from_json((Path(spec["members"][0]) / "config.json").read_text())
        config.threads = config.threads or self.threads
        return self._enqueue(Job(job_id, "ensemble", config, folder))

    def snapshot(self, job_id: str) -> Snapshot | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job and not self.owns(job.dir):
                return None
            position = self._queue.index(job_id) + 1 if job_id in self._queue else 0
        return job.snapshot(position) if job else None

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            ids = [i for i, job in self._jobs.items() if self.owns(job.dir)]
        return [s for s in (self.snapshot(i) for i in ids) if s is not None]

    def active(self, kind: str | None = "train") -> list[Snapshot]:
        """Queued and running jobs of one kind, or of every kind (None)."""
        return [s for s in self.snapshots() if s.active and kind in (None, s.kind)]

    def stop(self, job_id: str) -> None:
        """Stop a running job within one batch (killed after a grace period); a queued one never starts."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job and not self.owns(job.dir):  # another project's job reads as unknown
                return
            queued = job_id in self._queue
            if queued:
                self._queue.remove(job_id)
        if job is None:
            return
        if queued:
            job.end("stopped")
        else:
            job.request_stop()

    def _check_owned(self, job_dir: Path) -> None:
        if not self.owns(job_dir):
            raise JobError(f"There is no {job_dir.name} in this project.")

    def _admit(self) -> None:
        """A project's view refuses work past its user's job quota or its owner's disk quota."""
        if not self.scoped:
            return
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.user == self.user.name]
        try:
            quotas.check_jobs(self.user, sum(1 for j in jobs if j.snapshot().active))
            quotas.check_disk(self.home.parent.parent.parent, self.owner)  # home = ROOT/projects/OWNER/NAME
        except quotas.QuotaError as exc:
            raise JobError(str(exc)) from None

    def _enqueue(self, job: Job) -> str:
        self._admit()
        if self.scoped:
            job.user, job.home = self.user.name, self.home
        job.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._jobs[job.id] = job
            self._queue.append(job.id)
        self._start_next()
        return job.id

    def _start_next(self) -> None:
        with self._lock:
            while self._queue and len(self._running) < self.max_running:
                job = self._jobs[self._queue.pop(0)]
                self._running.add(job.id)
                Supervisor(job, self._finished).start()

    def _finished(self, job: Job) -> None:
        with self._lock:
            self._running.discard(job.id)
            self._evict()
        self._start_next()

    def _evict(self) -> None:
        done = [j for j in self._jobs.values() if j.id not in self._running and j.id not in self._queue]
        done.sort(key=lambda j: j.ended_at)
        for job in done[: max(0, len(done) - self.keep_finished)]:
            del self._jobs[job.id]

    def _reattach(self) -> None:
        """Follow the workers an earlier server started and that are still running, in every project."""
        homes = [self.home] + sorted(p.parent for p in (self.home / PROJECTS).glob("*/*/project.json"))
        for root in (r for home in homes for r in job_roots(home).values()):
            for info in sorted(root.glob(f"*/{WORKER_FILE}")) if root.is_dir() else ():
                job_dir = info.parent
                pid = live_worker(job_dir)
                spec = read_json(job_dir / "job.json")
                if pid is None or not spec:
                    continue
                job = Job(job_dir.name, spec["kind"], RunConfig.from_dict(spec["config"]), job_dir,
                          resume=spec.get("resume", False), steps=spec.get("steps", 0))
                job.user, job.home = spec.get("user", ""), job_dir.parent.parent if spec.get("user") else None
                job.attached(pid)  # running from the first snapshot on, not "queued" until the thread runs
                with self._lock:
                    self._jobs[job.id] = job
                    self._running.add(job.id)
                Supervisor(job, self._finished, pid=pid).start()


def _one_process(config: RunConfig) -> RunConfig:
    """Searches, cross-validations and sweeps run their fits in one process each (a search has its own workers)."""
    return dataclasses.replace(config, distributed=DistributedConfig())


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
