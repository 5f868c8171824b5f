"""Training jobs as worker processes against the in-process thread they replaced, measured in one run.

The registry lives in this process, as in the server, over a temporary workspace (FTLAB_HOME, which the
workers inherit), with its default torch threads per worker. On generated images (noise around one colour per
class; `--data DIR` uses a folder of yours for every part instead):

1. the first job's start: seconds from submit to the first training batch of the first worker job, which
   also starts the fork server (core/jobs/forkserver.py: the imports every later worker is forked with);
2. server memory: 10 small jobs one after another (resnet18, random weights, full, 64 px, 1 epoch); this
   process's resident memory (VmRSS) after the 10th finished minus after the 1st. Before any training in
   this process has grown or freed its heap;
3. start-up: seconds from submit to the first training batch of a worker job (as the server sees it: the
   registry's snapshot shows a batch loss; the worker writes progress at most every 0.2 s and the supervisor
   reads it every 0.1 s), against the same config in the old way, `fit` in a thread of this process with a
   callback timing the first training batch (after one untimed warm-up, as a server has torch loaded already);
   alternated, median of each; every job is stopped at its first batch;
4. stop during feature extraction: a linear probe on random resnet18 weights at 224 px over 256x256 images,
   stopped once a batch of features is done; seconds from `stop` until the snapshot is no longer active;
5. stop during training batches: full fine-tuning at 64 px on the same images, stopped once a batch is done.

Prints the figures beside their targets (start overhead <= 3 s, stop <= 2 s, growth <= 50 MB), the cores, the
workers' torch threads and the load average (other work on the machine spoils the figures), then one line of
JSON. A benchmark, not a test: it exits 0 unless a job fails. About 2 minutes on 2 cores.

    python bench/jobs.py [--data DIR] [--repeats 3] [--jobs 10] [--feature-images 240]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLOURS = [(220, 40, 40), (40, 60, 220), (40, 200, 60), (230, 210, 40)]
POLL_S = 0.02


def write_images(root: Path, per_class: int, side: int) -> Path:
    """ImageFolder layout, one colour per class with noise, so the data is valid and learnable."""
    rng = np.random.default_rng(0)
    for c, colour in enumerate(COLOURS):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{i}.png")
    return root


def make_config(source: Path, strategy: str, size: int, epochs: int, threads: int, batch_size: int = 8):
    from core.config import RunConfig

    config = RunConfig()
    config.data.source = str(source)
    config.model.backbone, config.model.weights, config.model.strategy = "resnet18", "random", strategy
    config.augment.image_size, config.augment.crop_scale_min, config.augment.hflip = size, 1.0, 0.0
    config.optim.epochs, config.optim.batch_size = epochs, batch_size
    config.threads = threads
    return config


def wait(registry, job_id: str, until, timeout: float, what: str):
    """The first snapshot that satisfies `until`; raises when the job ends before it or time runs out."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        snap = registry.snapshot(job_id)
        if until(snap):
            return snap
        if not snap.active:
            raise RuntimeError(f"job {job_id} ended ({snap.status}: {snap.error}) before {what}")
        time.sleep(POLL_S)
    raise RuntimeError(f"job {job_id}: no {what} within {timeout:.0f} s")


def stop_and_wait(registry, job_id: str) -> tuple[float, str]:
    """Seconds from the stop request until the job is no longer active, and how it ended."""
    start = time.perf_counter()
    registry.stop(job_id)
    snap = wait(registry, job_id, lambda s: not s.active, 60, "stop")
    return time.perf_counter() - start, snap.status


def rss_mb() -> float:
    """This process's resident memory (Linux /proc), after a collection so garbage awaiting one is not counted."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_phase(registry, source: Path, jobs: int) -> list[float]:
    """RSS after each finished job, the jobs run one after another."""
    after = []
    for _ in range(jobs):
        job_id = registry.submit(make_config(source, "full", 64, 1, registry.threads))
        wait(registry, job_id, lambda s: s.status == "finished", 300, "finish")
        after.append(rss_mb())
    return after


def start_worker(registry, source: Path) -> float:
    start = time.perf_counter()
    job_id = registry.submit(make_config(source, "full", 64, 50, registry.threads))
    wait(registry, job_id, lambda s: len(s.batch_losses) > 0, 300, "training batch")
    seconds = time.perf_counter() - start
    stop_and_wait(registry, job_id)
    return seconds


def start_thread(source: Path, run_dir: Path, threads: int) -> float:
    """The old way: `fit` in a thread of the server, timed to its first training batch, then stopped."""
    from core.train.callbacks import Callback
    from core.train.engine import fit

    class FirstBatch(Callback):
        def __init__(self) -> None:
            self.at: float | None = None
            self.seen = threading.Event()

        def on_batch_end(self, state) -> None:
            if state.phase == "train" and self.at is None:
                self.at = time.perf_counter()
                self.seen.set()

    first, stop, errors = FirstBatch(), threading.Event(), []

    def target() -> None:
        try:
            fit(make_config(source, "full", 64, 50, threads), run_dir, [first], stop)
        except Exception as exc:  # reported below: the bench must not wait forever on a dead thread
            errors.append(exc)
            first.seen.set()

    start = time.perf_counter()
    thread = threading.Thread(target=target, name="train")
    thread.start()
    first.seen.wait(300)
    stop.set()
    thread.join()
    if errors or first.at is None:
        raise RuntimeError(f"in-process fit failed before its first batch: {errors}")
    return first.at - start


def batch_seconds(job_dir: Path, phase: str) -> float | None:
    """A batch's seconds in `phase`, from the worker's own progress events (time and batch of each)."""
    from core.jobs.events import EVENTS, read_events

    states = [(e["t"], e["epoch"], e["batch"]) for e in read_events(job_dir / EVENTS)[0]
              if e["e"] == "state" and e["phase"] == phase and e["batch"] >= 1]
    states = [s for s in states if s[1] == states[0][1]] if states else []  # one epoch: batch counts restart
    if len(states) < 2 or states[-1][2] == states[0][2]:
        return None
    return (states[-1][0] - states[0][0]) / (states[-1][2] - states[0][2])


def stop_phase(registry, config, phase: str) -> dict:
    """Start a job, stop it once a batch of `phase` is done; the stop's latency, the status and the batch time."""
    job_id = registry.submit(config)
    wait(registry, job_id, lambda s: s.phase == phase and s.batch >= 1, 300, f"{phase} batch")
    seconds, status = stop_and_wait(registry, job_id)
    return {"seconds": seconds, "status": status, "batch": batch_seconds(registry.snapshot(job_id).run_dir, phase)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="an ImageFolder to use instead of the generated images")
    p.add_argument("--repeats", type=int, default=3, help="timed starts of each kind (median)")
    p.add_argument("--jobs", type=int, default=10, help="finished jobs for the memory figure")
    p.add_argument("--feature-images", type=int, default=240, help="generated 256x256 images for the stop tests")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["FTLAB_HOME"] = str(tmp / "workspace")
        from core.config import workspace_root
        from core.jobs.registry import JobRegistry

        began, load_before = time.perf_counter(), os.getloadavg()
        small = args.data.resolve() if args.data else write_images(tmp / "small", 6, 64)
        large = args.data.resolve() if args.data else write_images(tmp / "large", args.feature_images // 4, 256)
        registry = JobRegistry(workspace_root() / "runs")  # as app.py builds the server's

        first = start_worker(registry, small)
        rss = memory_phase(registry, small, args.jobs)
        start_thread(small, tmp / "warm-up", registry.threads)  # torch and the model code loaded, as in a server
        worker, thread = [], []
        for i in range(args.repeats):
            worker.append(start_worker(registry, small))
            thread.append(start_thread(small, tmp / f"thread-{i}", registry.threads))
        features = stop_phase(registry, make_config(large, "linear-probe", 224, 5, registry.threads, 32), "features")
        train = stop_phase(registry, make_config(large, "full", 64, 50, registry.threads, 32), "train")
        total, load_after = time.perf_counter() - began, os.getloadavg()

    report(args, registry, first, rss, worker, thread, features, train, total, (load_before, load_after))


def report(args, registry, first: float, rss: list[float], worker: list[float], thread: list[float], features: dict,
           train: dict, total: float, load: tuple) -> None:
    start_worker_s, start_thread_s = statistics.median(worker), statistics.median(thread)
    overhead, growth = start_worker_s - start_thread_s, rss[-1] - rss[0]

    from core.train.engine import FEATURE_BATCH

    def verdict(value: float, target: float) -> str:
        return "ok" if value <= target else "OVER"

    def per_batch(result: dict) -> str:
        return "n/a" if result["batch"] is None else f"{result['batch']:.2f} s"

    data = (str(args.data) if args.data
            else f"generated: 4 classes x 6 at 64 px; 4 x {args.feature_images // 4} at 256 px")
    print(f"{os.cpu_count()} cores; the registry gives each worker {registry.threads} torch threads "
          f"(at most {registry.max_running} running); load average {load[0][0]:.1f} before, {load[1][0]:.1f} after")
    print(f"data: {data}; model: resnet18, random weights")
    head = f"{'measure':58s} {'value':>9s}  {'target':>9s}"
    print(head)
    print("-" * len(head))
    print(f"{'start, first job: submit -> first batch, fork server included':58s} {first:7.2f} s")
    print(f"{'start, worker: submit -> first training batch (median of ' + str(len(worker)) + ')':58s} "
          f"{start_worker_s:7.2f} s   ({', '.join(f'{s:.2f}' for s in worker)})")
    print(f"{'start, thread: in-process fit -> first training batch':58s} "
          f"{start_thread_s:7.2f} s   ({', '.join(f'{s:.2f}' for s in thread)})")
    print(f"{'start overhead (worker - thread)':58s} {overhead:7.2f} s  {'<= 3 s':>9s}  {verdict(overhead, 3)}")
    print(f"{'stop while computing features (linear probe, 224 px)':58s} {features['seconds']:7.2f} s  "
          f"{'<= 2 s':>9s}  {verdict(features['seconds'], 2)}  status {features['status']}; "
          f"a feature batch ({FEATURE_BATCH} images) takes {per_batch(features)}")
    print(f"{'stop during training batches (full, 64 px)':58s} {train['seconds']:7.2f} s  "
          f"{'<= 2 s':>9s}  {verdict(train['seconds'], 2)}  status {train['status']}; "
          f"a training batch (32 images) takes {per_batch(train)}")
    print(f"{'server RSS growth, job 1 -> job ' + str(len(rss)) + ' finished':58s} {growth:6.1f} MB  "
          f"{'<= 50 MB':>9s}  {verdict(growth, 50)}  ({rss[0]:.0f} -> {rss[-1]:.0f} MB)")
    print(f"total {total:.0f} s")
    print(json.dumps({
        "start_first_job_s": round(first, 2), "start_overhead_s": round(overhead, 2),
        "start_worker_s": round(start_worker_s, 2), "start_thread_s": round(start_thread_s, 2),
        "stop_latency_features_s": round(features["seconds"], 2), "stop_status_features": features["status"],
        "stop_latency_train_s": round(train["seconds"], 2),
        "stop_status_train": train["status"], "server_rss_growth_mb": round(growth, 1),
        "cores": os.cpu_count(), "worker_threads": registry.threads,
    }))


if __name__ == "__main__":
    main()
