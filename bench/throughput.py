"""Training throughput of the engine against a plain hand-written torchvision loop.

Same model, batch size, data, image size and threads, and the same work: the plain loop trains every layer, so
the engine runs full fine-tuning too (not the default strategy, which may train only the head), in the plain
loop's contiguous float32 (not the default channels_last). Each variant runs
in its own process so its peak memory (max RSS) is its own. Prints a table, then one line of JSON with the
engine/plain ratios (the target: 0.95 or more).

    python bench/throughput.py --data ../shared/datasets/hymenoptera/train
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STRATEGY = "full"  # the engine's strategy: what the plain loop does, every parameter training


def plain(data: Path, backbone: str, size: int, batch: int, threads: int, batches: int) -> float:
    """The loop from torchvision's transfer-learning tutorial, nothing more."""
    import torch
    from torchvision import datasets, models, transforms

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.6, 1.0)), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(data), tf), batch_size=batch, shuffle=True,
                                         drop_last=True)
    model = getattr(models, backbone)(num_classes=len(loader.dataset.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == batches + 1:
            break
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 0:
            start = time.perf_counter()  # the first batch warms up allocators and kernels
        else:
            seen += y.numel()
    return seen / (time.perf_counter() - start)


def engine(data: Path, backbone: str, size: int, batch: int, threads: int, batches: int) -> float:
    import tempfile

    from core.train.callbacks import Callback, StopTraining
    from core.config import RunConfig
    from core.train.engine import fit

    class Clock(Callback):
        start, seen = 0.0, 0

        def on_batch_end(self, state):
            if state.batch == 1:
                self.start = time.perf_counter()
            else:
                self.seen += batch
            if state.batch == batches + 1:
                self.end = time.perf_counter()
                raise StopTraining("benchmark done")

    config = RunConfig()
    config.data.source, config.data.val_ratio = str(data), 0.0
    config.model.backbone, config.model.weights = backbone, "random"
    config.model.strategy = STRATEGY
    config.augment.image_size, config.augment.crop_scale_min = size, 0.6
    config.optim.batch_size, config.optim.epochs, config.threads = batch, 1, threads
    config.channels_last, config.precision = False, "fp32"  # the plain loop's layout and arithmetic: this measures
    # the engine's own cost (callbacks, metrics, checkpoints); bench/speed.py measures what channels_last gains
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        fit(config, Path(tmp) / "run", [clock])
    return clock.seen / (clock.end - clock.start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="an ImageFolder (class subfolders)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=6, help="timed batches after one warm-up batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backbones", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    p.add_argument("--variant", choices=["plain", "engine"], help=argparse.SUPPRESS)  # child process
    p.add_argument("--backbone", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        fn = plain if args.variant == "plain" else engine
        ips = fn(args.data.resolve(), args.backbone, args.size, args.batch, args.threads, args.batches)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"images_per_s": ips, "peak_mb": peak_mb}))
        return
    results, summary = {}, {}
    for backbone in args.backbones:
        for variant in ("plain", "engine"):
            cmd = [sys.executable, __file__, "--variant", variant, "--backbone", backbone, "--data", str(args.data),
                   "--size", str(args.size), "--batch", str(args.batch), "--batches", str(args.batches),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            results[backbone, variant] = json.loads(out.stdout.strip().splitlines()[-1])
        e, pl = results[backbone, "engine"], results[backbone, "plain"]
        summary[f"{backbone}_ratio"] = round(e["images_per_s"] / pl["images_per_s"], 3)
        summary[f"{backbone}_memory_ratio"] = round(e["peak_mb"] / pl["peak_mb"], 3)
        print(f"{backbone:<20} strategy {STRATEGY:<5} plain {pl['images_per_s']:6.1f} img/s {pl['peak_mb']:6.0f} MB   "
              f"engine {e['images_per_s']:6.1f} img/s {e['peak_mb']:6.0f} MB   ratio {summary[f'{backbone}_ratio']:.3f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
