"""Page rerun latency with and without a training job in the background, measured in one run.

The pages run through Streamlit's AppTest in this process, as a real server runs them: one process holds the
script runs (a new thread per rerun) and the shared job registry (`st.cache_resource`); a job trains in a worker
process of its own, so it competes with the pages for the cores, not for the server's GIL. All on the built-in sample dataset (3 classes x 40 pictures)
in a temporary workspace (FTLAB_HOME):

1. a tiny finished run (resnet18, random weights, 32 px, 1 epoch), so Train, Results and Runs have a run to
   show; every page opens with `?data=KEY&run=THAT_RUN` in every phase, so each rerun does the same work;
2. idle: N reruns of each page, round robin, after two warm-up runs per page;
3. the same reruns while a real job trains in the background (efficientnet_lite0 with its packaged weights,
   strategy full, 224 px, batch 32, more epochs than the window lasts) with the registry's default torch
   threads (cpu_count / FTLAB_MAX_JOBS: every core with one job at a time), timed from its first training batch
   on; then the job is stopped;
4. the same with a job given `--threads` torch threads (default: one core fewer, left to the server), then
   stopped;
5. idle again: how far two idle measurements differ on this machine now (the noise floor).

Prints per page and phase the median and p90 seconds per rerun and the ratio of the medians to idle's; the
overall ratio (one pass over every page: the sum of the per-page medians); per phase the cores kept busy by
this process and by everything else on the machine (other load spoils the ratios), the torch threads a new
thread (a page's script run) gets, the job's threads and how many training batches it ended in the window
(too few to compare its pace: a batch takes seconds); then one line of JSON. The aim: an overall ratio of at
most 2 with the default threads. A benchmark, not a test: it exits 0. About 2 minutes on 2 cores.

    python bench/ui_latency.py [--reruns 30] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAGES = {"Home": "views/home.py", "Data": "views/data.py", "Model": "views/model.py", "Train": "views/train.py",
         "Results": "views/results.py", "Runs": "views/runs.py"}


def dataset_key(home: Path) -> str:
    from core.data.sample_data import write_sample
    from core.data.sources import ingest

    with tempfile.TemporaryDirectory() as tmp:
        return ingest(write_sample(Path(tmp) / "shapes"), home).key


def open_pages(key: str, run_id: str) -> dict:
    """One session (AppTest) per page, opened the way the tests open them, warmed up twice."""
    from streamlit.testing.v1 import AppTest

    pages = {}
    for name, path in PAGES.items():
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params["data"], at.query_params["run"] = key, run_id
        at.run()
        at.switch_page(path).run()
        at.run()
        if at.exception:
            raise RuntimeError(f"{name} page failed: {at.exception}")
        pages[name] = at
    return pages


def time_reruns(pages: dict, reruns: int) -> dict:
    """Seconds per rerun for each page, round robin; also the window's wall time, this process's CPU time and
    the CPU time of everything else on the machine (other load there makes the ratios meaningless)."""
    times = {name: [] for name in pages}
    cpu0, machine0, wall0 = _cpu(), _machine_cpu(), time.perf_counter()
    for _ in range(reruns):
        for name, at in pages.items():
            start = time.perf_counter()
            at.run()
            times[name].append(time.perf_counter() - start)
            if at.exception:
                raise RuntimeError(f"{name} page failed: {at.exception}")
    wall, cpu, machine = time.perf_counter() - wall0, _cpu() - cpu0, _machine_cpu()
    others = None if machine is None or machine0 is None else max(0.0, machine - machine0 - cpu)
    return {"times": times, "wall": wall, "cpu": cpu, "others": others}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _machine_cpu() -> float | None:
    """Busy CPU seconds of the whole machine, all cores (Linux /proc/stat); None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, _steal = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def wait(registry, job_id: str, until, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        snap = registry.snapshot(job_id)
        if until(snap):
            return snap
        if not snap.active:
            raise RuntimeError(f"job {job_id} ended ({snap.status}: {snap.error}) before {what}")
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id}: no {what} within {timeout:.0f} s")


def seed_run(registry, source: str) -> str:
    """A finished run in seconds, so the run pages show curves, a confusion matrix and downloads."""
    from core.config import RunConfig

    config = RunConfig()
    config.data.source = source
    config.model.backbone, config.model.weights, config.model.strategy = "resnet18", "random", "full"
    config.augment.image_size, config.optim.batch_size, config.optim.epochs = 32, 8, 1
    run_id = registry.submit(config)
    wait(registry, run_id, lambda s: s.status == "finished", 120, "finish")
    return run_id


def training_phase(registry, pages: dict, source: str, threads: int | None, epochs: int, reruns: int) -> dict:
    """Start a heavy job, time the reruns while it is in its training phase, stop it; what it measured."""
    from core.config import RunConfig

    config = RunConfig()  # the default backbone (efficientnet_lite0, packaged weights) at its 224 px
    config.data.source = source
    config.model.strategy, config.optim.epochs = "full", epochs  # every layer trains: real CPU work
    config.threads = threads or 0  # 0: the registry fills in its default
    job_id = registry.submit(config)
    wait(registry, job_id, lambda s: s.status == "running" and s.phase == "train" and s.batch > 0, 180,
         "training batch")
    before = registry.snapshot(job_id)
    measured = time_reruns(pages, reruns)
    after = registry.snapshot(job_id)
    torch_threads = fresh_thread_torch_threads()
    registry.stop(job_id)
    wait(registry, job_id, lambda s: not s.active, 120, "stop")
    batches = len(after.batch_losses) - len(before.batch_losses)
    return measured | {"threads": after.config["threads"], "torch_threads": torch_threads, "batches": batches,
                       "epochs_seen": (before.epoch, after.epoch)}


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def fresh_thread_torch_threads() -> int:
    """Torch threads a new thread (a page's script run) starts with: torch sets each thread's count when it
    first uses torch, from the last torch.set_num_threads anywhere in the process (here: the last job's)."""
    import threading

    import torch

    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def idle_phase(pages: dict, reruns: int) -> dict:
    return time_reruns(pages, reruns) | {"torch_threads": fresh_thread_torch_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reruns", type=int, default=30, help="timed reruns of each page per phase")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch threads of the second training job, compared with the registry's default "
                        "(default: one core fewer, %(default)s here)")
    p.add_argument("--epochs", type=int, default=500, help="planned epochs of the training job (it is stopped)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FTLAB_HOME"] = str(Path(tmp) / "workspace")
        import streamlit as st
        import streamlit.logger
        from streamlit.testing.v1 import AppTest

        streamlit.logger.set_log_level("ERROR")  # bare-mode notes before the first run

        from core.config import workspace_root
        from core.data.validation import open_dataset

        start = time.perf_counter()
        key = dataset_key(workspace_root())
        source = str(open_dataset(key, workspace_root()).data_dir)
        st.cache_resource.clear()  # a registry of this workspace, as a fresh server has
        first = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        first.run()
        streamlit.logger.set_log_level("ERROR")  # again once AppTest has read its config: the pages' deprecation notes
        registry = first.session_state["registry"]
        default_threads = registry.threads
        run_id = seed_run(registry, source)
        pages = open_pages(key, run_id)

        phases = [("idle", idle_phase(pages, args.reruns))]
        for threads in [None] + ([args.threads] if args.threads != default_threads else []):
            result = training_phase(registry, pages, source, threads, args.epochs, args.reruns)
            phases.append((f"job {result['threads']} thr", result))
        phases.append(("idle again", idle_phase(pages, args.reruns)))  # the noise floor of this machine now
        total = time.perf_counter() - start

    report(phases, default_threads, args.reruns, total)


def report(phases: list[tuple[str, dict]], default_threads: int, reruns: int, total: float) -> None:
    base = {page: summary(t)[0] for page, t in phases[0][1]["times"].items()}
    print(f"{os.cpu_count()} cores; registry default torch threads {default_threads}; {reruns} reruns per page and "
          "phase; data: the sample (3 classes x 40, 96 px); job: efficientnet_lite0, full, 224 px, batch 32")
    print("seconds per rerun, median and p90; ratio: the phase's median / idle's median")
    head = f"{'page':8s}" + "".join(f" | {name:>10s}   p90" + ("  ratio" if i else "")
                                    for i, (name, _) in enumerate(phases))
    print(head)
    print("-" * len(head))
    for page in PAGES:
        row = f"{page:8s}"
        for i, (_, phase) in enumerate(phases):
            med, p90 = summary(phase["times"][page])
            row += f" | {med:10.3f} {p90:5.3f}" + (f"  {med / base[page]:5.2f}" if i else "")
        print(row)
    ratios = {}
    row = f"{'all':8s}"
    for i, (name, phase) in enumerate(phases):
        med = sum(summary(t)[0] for t in phase["times"].values())
        p90 = sum(summary(t)[1] for t in phase["times"].values())
        row += f" | {med:10.3f} {p90:5.3f}"
        if i:
            ratios[name] = med / sum(base.values())
            row += f"  {ratios[name]:5.2f}"
    print(row)
    print("(all: one pass over every page, the sum of the per-page medians)")
    for name, phase in phases:
        others = "" if phase["others"] is None else f", other processes {phase['others'] / phase['wall']:.2f}"
        line = (f"{name:>10s}: cores busy: this process {phase['cpu'] / phase['wall']:.2f}{others}, over "
                f"{phase['wall']:.1f} s; a new thread gets {phase['torch_threads']} torch threads")
        if "threads" in phase:
            line += (f"; the job ran with {phase['threads']} torch threads and ended {phase['batches']} training "
                     f"batches in the window (epoch {phase['epochs_seen'][0]} -> {phase['epochs_seen'][1]})")
        print(line)
    print(f"total {total:.0f} s (ratios hold only where other processes kept near 0 cores busy)")
    out = {"ratio": round(ratios[f"job {default_threads} thr"], 2), "threads_default": default_threads,
           "idle_seconds": round(sum(base.values()), 3), "ratio_idle_again": round(ratios["idle again"], 2)}
    for name, ratio in ratios.items():
        threads = name.split()[1] if name.startswith("job ") else None
        if threads is not None and int(threads) != default_threads:
            out[f"ratio_threads_{threads}"] = round(ratio, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
