"""The near-duplicate threshold, measured: how close is an image to a copy of itself, and to its nearest other image?

Every image gets one perturbed copy, made the way people really copy pictures: cropped 2-5 % a side, resized
by 0.8, 5-10 % brighter or darker, re-encoded as JPEG at quality 70. Originals and copies go through
engine.dataset_features (the default backbone and weights, a temporary workspace so the cache is fresh), then
each image's similarity to its copy is set against its similarity to the nearest *different* original. The
threshold that separates them is printed, with what it catches and what it flags, and one line of JSON.

    python bench/near_duplicates.py --data ../shared/datasets/hymenoptera
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COPY = "__copy"


def perturb(data: bytes, rng: np.random.Generator) -> bytes:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = img.size
    left, top, right, bottom = rng.uniform(0.02, 0.05, 4)
    img = img.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))
    img = img.resize((max(1, round(img.width * 0.8)), max(1, round(img.height * 0.8))), Image.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.10))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def build(data: Path, out: Path, seed: int) -> int:
    """out/<class>/<split>_<name> (the original's bytes) and <split>_<stem>__copy.jpg beside it."""
    from core.data.images import is_image_name

    rng = np.random.default_rng(seed)
    count = 0
    for path in sorted(p for p in data.rglob("*") if p.is_file() and is_image_name(p.name)):
        rel = path.relative_to(data).parts
        cls, prefix = rel[-2], "_".join(rel[:-2]) or "all"
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        raw = path.read_bytes()
        (folder / f"{prefix}_{path.name}").write_bytes(raw)
        (folder / f"{prefix}_{path.stem}{COPY}.jpg").write_bytes(perturb(raw, rng))
        count += 1
    return count


def percentiles(values: np.ndarray, qs=(1, 5, 50, 95, 99)) -> dict:
    return {f"p{q}": round(float(np.percentile(values, q)), 4) for q in qs} | {
        "min": round(float(values.min()), 4), "max": round(float(values.max()), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "hymenoptera")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FTLAB_HOME"] = str(Path(tmp) / "workspace")
        import torch
        from core.config import RunConfig
        from core.train.engine import dataset_features

        images = build(args.data.resolve(), Path(tmp) / "data", args.seed)
        config = RunConfig()
        config.data.source, config.threads = str(Path(tmp) / "data"), os.cpu_count() or 1
        start = time.perf_counter()
        dataset, feats = dataset_features(config)
        seconds = time.perf_counter() - start

    paths = [s.path for s in dataset.samples]
    row = {path: k for k, path in enumerate(paths)}
    originals = [k for k, path in enumerate(paths) if COPY not in path]
    pairs = [(k, row[c]) for k in originals if (c := paths[k].rsplit(".", 1)[0] + COPY + ".jpg") in row]
    f = torch.nn.functional.normalize(feats.float(), dim=1)
    sims = (f @ f.T).numpy()
    copy_sim = np.array([sims[o, c] for o, c in pairs])
    among = sims[np.ix_(originals, originals)].copy()
    np.fill_diagonal(among, -np.inf)
    nearest = among.max(axis=1)

    catch_all_but_5 = float(np.percentile(copy_sim, 5))
    flag_1 = float(np.percentile(nearest, 99))
    threshold = round((catch_all_but_5 + flag_1) / 2, 2) if catch_all_but_5 > flag_1 else round(catch_all_but_5, 2)
    caught, flagged = float((copy_sim >= threshold).mean()), float((nearest >= threshold).mean())
    upper = np.triu_indices(len(originals), 1)
    closest = np.argsort(-among[upper])[:3]

    print(f"{args.data}: {images} images, {len(pairs)} with their copy in the dataset; "
          f"backbone {config.model.backbone} ({config.model.weights}), {config.augment.image_size} px; "
          f"features in {seconds:.1f} s")
    print("copy of itself       ", percentiles(copy_sim))
    print("nearest other image  ", percentiles(nearest))
    print(f"catching 95 % of copies needs <= {catch_all_but_5:.4f}; flagging < 1 % of distinct images needs > "
          f"{flag_1:.4f}")
    print(f"threshold {threshold:.2f}: catches {caught:.1%} of copies, flags {flagged:.1%} of distinct images")
    print("most similar distinct images (look at them: real duplicates in the data show up here):")
    for i, j in zip(upper[0][closest], upper[1][closest]):
        print(f"  {among[i, j]:.4f}  {paths[originals[i]]}  {paths[originals[j]]}")
    print(json.dumps({"images": images, "copies": len(pairs), "threshold": threshold, "copies_caught": round(caught, 4),
                      "distinct_flagged": round(flagged, 4), "copy": percentiles(copy_sim),
                      "nearest_distinct": percentiles(nearest), "feature_seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
