"""Speed of the default run, feature extraction, Predict and full fine-tuning, old path against new, in one process.

Every ratio compares like with like: the same model (efficientnet_lite0 with its packaged ImageNet weights), the
same images of DIR, the same threads; only the path differs. The old path is eager PyTorch for frozen networks
(`engine="eager"`) and a contiguous float32 layout for training (`channels_last=False`); the new one is the
defaults. Decoding is in every figure (it is in what a user waits for; it is also measured alone, on one thread
and on the DecodingLoader's), so each throughput is also printed as a
share of what the machine's float32 matrix-multiply peak (measured here, in the same run) allows for the
network's multiply-adds. Prints a table and one line of JSON:

  extract_ratio      feature extraction images/s, auto engine / eager (target >= 3 on 2 cores)
  default_run_ratio  seconds of the default run on DIR, eager engine / auto (target >= 2.5), with acc_old, acc_new
  predict_ratio      Predict images/s (decoding files included), auto / eager (target >= 3)
  full_ft_ratio      full fine-tuning images/s, new defaults / channels_last off (target >= 1.2); bf16 beside it
  runs_page_s        one rerun of the Runs page with 1,000 runs on disk (bench/runs_page.py)

    python bench/speed.py --data ../shared/datasets/hymenoptera [--runs 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
BACKBONE = "efficientnet_lite0"
TRAIN_BATCH, TRAIN_STEPS = 16, 6


def matmul_peak(threads: int) -> float:
    """The machine's float32 GFLOP/s on a large square matrix product (best of several), with `threads`."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def images_of(data: Path):
    from core.config import RunConfig, workspace_root
    from core.data.validation import load_dataset

    config = RunConfig()
    config.data.source = str(data)
    return config, load_dataset(config.data.source, workspace_root(), config.data)


def extraction(data: Path, engine: str) -> float:
    """Images/s of the frozen backbone's features over every image of DIR, decoding included."""
    import torch

    from core.data.augment import eval_transform
    from core.data.loaders import DecodingLoader, ImageDataset
    from core.models import backbones
    from core.models.weights import resolve
    from core.train import features
    from core.train.engine import FEATURE_BATCH

    config, dataset = images_of(data)
    backbone = backbones.get(BACKBONE)
    model = backbones.build_model(backbone, len(dataset.classes), 0.0, resolve(backbone, "pretrained")[0])
    images = ImageDataset(dataset.data_dir, dataset.samples, eval_transform(config.augment, backbone.mean,
                                                                             backbone.std), config.augment.resize_side())
    start = time.perf_counter()
    features.extract(model, backbone, DecodingLoader(images, FEATURE_BATCH, torch.get_num_threads()),
                     torch.device("cpu"), engine)
    return len(images) / (time.perf_counter() - start)


def decoding(data: Path, threads: int) -> float:
    """Images/s of decoding and resizing alone (what the engines wait on), on one thread or the DecodingLoader's."""
    from core.data.augment import eval_transform
    from core.data.loaders import DecodingLoader, ImageDataset
    from core.models import backbones
    from core.train.engine import FEATURE_BATCH

    config, dataset = images_of(data)
    backbone = backbones.get(BACKBONE)
    images = ImageDataset(dataset.data_dir, dataset.samples, eval_transform(config.augment, backbone.mean,
                                                                             backbone.std), config.augment.resize_side())
    start = time.perf_counter()
    for _ in DecodingLoader(images, FEATURE_BATCH, threads):
        pass
    return len(images) / (time.perf_counter() - start)


def default_run(data: Path, engine: str, home: Path) -> tuple[float, float]:
    """(seconds, best val accuracy) of `python -m core train DIR` with only the engine set, features uncached."""
    from core.config import RunConfig, workspace_root
    from core.train.engine import fit

    shutil.rmtree(workspace_root() / "features", ignore_errors=True)
    config = RunConfig()
    config.data.source, config.engine = str(data), engine
    start = time.perf_counter()
    result = fit(config, home / f"run-{engine}")
    return time.perf_counter() - start, result.best["val_acc"]


def predict(run_dir: Path, files: list[Path], engine: str) -> float:
    """Images/s of Predictor.classify on image files (decoding included), as the Predict page and CLI run it."""
    from core.evaluate.predict import Predictor

    predictor = Predictor.load(run_dir, engine)
    predictor.classify([(p.name, p) for p in files[:4]])  # builds (and checks) the engine: once per loaded model
    start = time.perf_counter()
    names, _, _ = predictor.classify([(p.name, p) for p in files])
    return len(names) / (time.perf_counter() - start)


def fine_tuning(data: Path, channels_last: bool, precision_name: str) -> float:
    """Images/s of full fine-tuning steps (forward, backward, AdamW) on DIR's training images, after one warm-up
    step; decoding and augmentation included, as in a run."""
    import torch

    from core.models import backbones
    from core.models.weights import resolve
    from core.train import precision
    from core.train.callbacks import Callbacks, State
    from core.train.engine import Step, _loaders, train_one_epoch

    config, dataset = images_of(data)
    config.optim.batch_size, config.augment.hflip = TRAIN_BATCH, 0.5
    backbone = backbones.get(BACKBONE)
    torch.manual_seed(0)
    model = backbones.build_model(backbone, len(dataset.classes), 0.0, resolve(backbone, "pretrained")[0]).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = list(_loaders(config, dataset, backbone, torch.device("cpu"))["train"])[:TRAIN_STEPS + 1]
    step = Step(torch.nn.CrossEntropyLoss(), torch.optim.AdamW(model.parameters(), 1e-4),
                precision=precision.resolve(precision_name, torch.device("cpu")), channels_last=channels_last)
    run = lambda batches: train_one_epoch(model, step, batches, torch.device("cpu"), State(), Callbacks([]),
                                          threading.Event())
    run(loader[:1])
    start = time.perf_counter()
    run(loader[1:])
    return TRAIN_STEPS * TRAIN_BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a class-folder or pre-split image dataset")
    parser.add_argument("--runs", type=int, default=1000, help="run folders on disk for runs_page_s")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ftlab-bench-speed-"))
    os.environ["FTLAB_HOME"] = str(home / "workspace")  # before core is imported: nothing of the real workspace
    try:
        import torch

        from core.models import backbones

        threads = torch.get_num_threads()
        peak = matmul_peak(threads)
        gflop = 2 * backbones.get(BACKBONE).metadata()["gflops"]  # published multiply-adds per 224 px image, x2
        data = args.data.resolve()
        r: dict[str, float] = {"threads": threads, "matmul_gflops": peak}
        r["decode_1"], r["decode_n"] = decoding(data, 1), decoding(data, threads)
        r["extract_eager"], r["extract_new"] = extraction(data, "eager"), extraction(data, "auto")
        (r["run_s_old"], r["acc_old"]), (r["run_s_new"], r["acc_new"]) = (default_run(data, "eager", home),
                                                                          default_run(data, "auto", home))
        _, dataset = images_of(data)
        files = [dataset.data_dir / s.path for s in dataset.samples]
        r["predict_eager"], r["predict_new"] = (predict(home / "run-auto", files, "eager"),
                                                predict(home / "run-auto", files, "auto"))
        r["ft_old"] = fine_tuning(data, False, "fp32")
        r["ft_new"] = fine_tuning(data, True, "auto")
        r["ft_bf16"] = fine_tuning(data, True, "bf16")
        from runs_page import page_rerun_seconds

        pages = page_rerun_seconds(args.runs)
        result = {"data": str(args.data), "images": len(files), **r,
                  "extract_ratio": r["extract_new"] / r["extract_eager"],
                  "default_run_ratio": r["run_s_old"] / r["run_s_new"],
                  "predict_ratio": r["predict_new"] / r["predict_eager"],
                  "full_ft_ratio": r["ft_new"] / r["ft_old"], "bf16_ratio": r["ft_bf16"] / r["ft_new"],
                  "runs_page_s": pages["runs_page_s"], "results_page_s": pages["results_page_s"],
                  "predict_page_s": pages["predict_page_s"]}
        share = lambda per_s, factor=1: per_s * gflop * factor / peak
        print(f"{args.data}: {len(files)} images; {threads} threads; float32 matmul peak {peak:.0f} GFLOP/s; "
              f"{BACKBONE} {gflop:.2f} GFLOP an image forward (training about 3x)")
        print(f"{'path':<34}{'old':>10}{'new':>10}{'ratio':>8}{'new, of peak':>14}")
        rows = [("feature extraction (images/s)", "extract_eager", "extract_new", "extract_ratio", 1),
                ("Predict (images/s)", "predict_eager", "predict_new", "predict_ratio", 1),
                ("full fine-tuning (images/s)", "ft_old", "ft_new", "full_ft_ratio", 3)]
        for name, old, new, ratio, factor in rows:
            print(f"{name:<34}{r[old]:10.1f}{r[new]:10.1f}{result[ratio]:8.2f}{share(r[new], factor):14.0%}")
        print(f"{'default run (s)':<34}{r['run_s_old']:10.2f}{r['run_s_new']:10.2f}{result['default_run_ratio']:8.2f}"
              f"   acc {r['acc_old']:.4f} -> {r['acc_new']:.4f}")
        print(f"decoding and resizing alone: {r['decode_1']:.0f} images/s on one thread, {r['decode_n']:.0f} on "
              f"{threads} (the DecodingLoader, one batch ahead of the engine)")
        print(f"full fine-tuning with bfloat16 autocast: {r['ft_bf16']:.1f} images/s, {result['bf16_ratio']:.2f}x "
              "the float32 default (not the default: see core/train/precision.py)")
        print(f"page reruns with {args.runs} runs on disk: Runs {pages['runs_page_s']:.3f} s, Results "
              f"{pages['results_page_s']:.3f} s, Predict {pages['predict_page_s']:.3f} s")
        targets = {"extract_ratio >= 3": result["extract_ratio"] >= 3,
                   "default_run_ratio >= 2.5": result["default_run_ratio"] >= 2.5,
                   "|acc_new - acc_old| <= 0.005": abs(r["acc_new"] - r["acc_old"]) <= 0.005,
                   "predict_ratio >= 3": result["predict_ratio"] >= 3,
                   "full_ft_ratio >= 1.2": result["full_ft_ratio"] >= 1.2,
                   "runs_page_s < 1": pages["runs_page_s"] < 1}
        for name, held in targets.items():
            print(f"target {name}: {'holds' if held else 'MISSED'}")
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
