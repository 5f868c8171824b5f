"""Training images/s of one run on one process against the same run on several (torchrun, `--nproc`).

On this machine: 1 process x 2 threads against 2 processes x 1 thread. Like with like: the same config (backbone
and its packaged ImageNet weights, full fine-tuning through the whole backbone, augmentation off, data and split,
global batch, image size, epochs, seed) and the same 2 threads in all; only the launch differs. Both go through
the CLI as a user runs them (`python -m core train DATA --out RUN --config cfg.json [--nproc N]`, torchrun started
by it) in a workspace of their own. Full fine-tuning, because it is where DDP has work to share; the linear probe
on cached features trains a head in a second on one process.

images/s = training images of the split / an epoch's wall time (the `seconds` of metrics.jsonl: its training and
its validation pass, what a user waits for each epoch), over the epochs after the first, whose time also holds
the processes' start-up (thread pools, first allocations, DDP's first buckets); with a single epoch, that one.
val_acc of the last epoch shows both runs train the same thing (not bit for bit: each of 2 processes computes
batch-norm statistics over its half of the batch).

With GPUs (torch.cuda.device_count() >= 1), the same run on device cuda with 1, 2, ... of them (the counts that
divide the global batch, which stays the same: strong scaling), all cores shared by the processes; ratios are
images/s on n GPUs / on one. Prints a table, then one line of JSON:

  cpu_1x2_images_s, cpu_2x1_images_s  images/s of 1 process x 2 threads, of 2 processes x 1 thread
  ddp_cpu_ratio                       cpu_2x1_images_s / cpu_1x2_images_s
  acc_1x2, acc_2x1                    val_acc of the last epoch of each
  run_s_1x2, run_s_2x1                seconds of each whole command (torchrun's start-up and held-out evaluation in)
  gpu_scaling                         null without a GPU, else {"images_s": {n: ...}, "ratio": {n: ...}}

    python bench/ddp.py --data ../shared/datasets/hymenoptera [--epochs 3] [--image-size 128] [--batch 16]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = 2  # the CPU comparison's threads in all, split evenly over the processes


@dataclass
class Measured:
    processes: int
    threads: int  # per process
    images_s: float
    epoch_s: float  # mean wall time of the timed epochs
    run_s: float  # the whole command: start-up, epochs, held-out evaluation (the dataset is checked before)
    val_acc: float
    weights: str


def run_config(args: argparse.Namespace, device: str, threads: int) -> dict:
    from core.config import RunConfig

    config = RunConfig()
    config.data.source = str(args.data.resolve())
    config.model.backbone, config.model.weights, config.model.strategy = args.backbone, "pretrained", "full"
    config.augment.image_size = args.image_size
    config.optim.batch_size, config.optim.epochs = args.batch, args.epochs
    config.device, config.threads = device, threads
    return config.to_dict()


def cli(command: list[str], home: Path) -> None:
    env = dict(os.environ) | {"FTLAB_HOME": str(home / "workspace")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"`{' '.join(command)}` exited {done.returncode}:\n{done.stderr[-3000:]}")


def train(config: dict, nproc: int, home: Path, name: str) -> Measured:
    """One run through the CLI; its numbers from the run folder it wrote."""
    run_dir, config_file = home / name, home / f"{name}.json"
    config_file.write_text(json.dumps(config))
    command = [sys.executable, "-m", "core", "train", config["data"]["source"], "--out", str(run_dir),
               "--config", str(config_file), "--nproc", str(nproc), "--quiet"]
    start = time.perf_counter()
    cli(command, home)
    run_s = time.perf_counter() - start
    written = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    train_images = sum(written["provenance"]["dataset"]["splits"]["train"].values())
    epoch_s = sum(r["seconds"] for r in timed) / len(timed)
    threads = max(1, (config["threads"] or os.cpu_count() or 1) // nproc)
    return Measured(written["provenance"]["processes"], threads, train_images / epoch_s, epoch_s, run_s,
                    rows[-1]["val_acc"], written["provenance"]["weights"]["source"])


def gpu_scaling(args: argparse.Namespace, home: Path) -> dict[int, Measured]:
    import torch

    counts = [n for n in range(1, torch.cuda.device_count() + 1) if args.batch % n == 0]
    return {n: train(run_config(args, "cuda", 0), n, home, f"gpu-{n}") for n in counts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a class-folder or pre-split image dataset")
    p.add_argument("--epochs", type=int, default=3, help="the first is start-up: 2 or more to time the rest")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch", type=int, default=16, help="the global batch, split over the processes")
    args = p.parse_args()
    if args.batch % 2:
        raise SystemExit("--batch must be even: 2 processes take half of it each")
    home = Path(tempfile.mkdtemp(prefix="ftlab-bench-ddp-"))
    try:
        # the dataset copied into the workspace and checked once, before any run: no run_s pays for it
        cli([sys.executable, "-m", "core", "inspect", str(args.data.resolve())], home)
        cpu = run_config(args, "cpu", THREADS)
        one, two = train(cpu, 1, home, "cpu-1x2"), train(cpu, 2, home, "cpu-2x1")
        gpus = gpu_scaling(args, home)
        timed = {1: "its only epoch", 2: "epoch 2"}.get(args.epochs, f"epochs 2..{args.epochs}")
        print(f"{args.data}: {args.backbone} ({one.weights} weights), full fine-tuning, {args.image_size} px, "
              f"global batch {args.batch}, {args.epochs} epochs; images/s over {timed}")
        print(f"{'launch':<26}{'images/s':>10}{'epoch s':>10}{'run s':>9}{'val_acc':>9}")
        rows = [(f"cpu {m.processes} process{'es' if m.processes > 1 else ''} x {m.threads} thread"
                 f"{'s' if m.threads > 1 else ''}", m) for m in (one, two)]
        rows += [(f"cuda {n} GPU{'s' if n > 1 else ''}", m) for n, m in gpus.items()]
        for label, m in rows:
            print(f"{label:<26}{m.images_s:10.1f}{m.epoch_s:10.2f}{m.run_s:9.1f}{m.val_acc:9.4f}")
        print(f"2 processes x 1 thread / 1 process x 2 threads: {two.images_s / one.images_s:.2f}x")
        if gpus:
            base = gpus[1].images_s
            print("GPU scaling (images/s on n / on 1): "
                  + ", ".join(f"{n}: {m.images_s / base:.2f}x" for n, m in gpus.items()))
        else:
            print("no GPU found: gpu_scaling is null")
        result = {"data": str(args.data), "backbone": args.backbone, "weights": one.weights,
                  "image_size": args.image_size, "global_batch": args.batch, "epochs": args.epochs,
                  "cpu_1x2_images_s": one.images_s, "cpu_2x1_images_s": two.images_s,
                  "ddp_cpu_ratio": two.images_s / one.images_s, "acc_1x2": one.val_acc, "acc_2x1": two.val_acc,
                  "run_s_1x2": one.run_s, "run_s_2x1": two.run_s,
                  "gpu_scaling": {"images_s": {n: round(m.images_s, 4) for n, m in gpus.items()},
                                  "ratio": {n: round(m.images_s / gpus[1].images_s, 4) for n, m in gpus.items()}}
                  if gpus else None}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
