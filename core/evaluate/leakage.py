"""Split leakage without patient groups: near-duplicate images that sit in different splits.

A copy of a training image in val or test (re-saved, resized, cropped a little) is graded on what the model has
already seen, so accuracy looks better than it will be on new images. Exact file hashes miss these copies;
the frozen backbone's features do not: two images are near-duplicates when their cosine similarity reaches
THRESHOLD. A pair whose classes differ is worth a look of its own: a mislabel, or one picture filed under both.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import torch

from core.config import AugmentConfig, ModelConfig, RunConfig
from core.data.validation import Dataset
from core.runs import read_json, write_json

# Measured by bench/near_duplicates.py on hymenoptera (398 images; efficientnet_lite0 pretrained, 224 px), each
# image against a copy of itself cropped 2-5 % a side, resized by 0.8, 5-10 % brighter or darker and re-encoded
# at JPEG quality 70 (all four at once): the copy's similarity p1 0.769, p5 0.821, median 0.898; the nearest
# *different* image's median 0.667, p99 0.795, max 0.801. At 0.81, 97.2 % of copies are caught and no distinct
# image (0 of 398) is flagged. The margin is narrow (0.80 to 0.82): lower and distinct photos
# get flagged (the closest, 0.801, are two ant photos with consecutive Flickr ids), higher and more copies slip.
THRESHOLD = 0.81
MAX_PAIRS = 500  # the most similar ones; more than this means a systematic copy, and the top of the list shows it
CHUNK = 256  # rows per block: 256 x 50,000 images is a 51 MB similarity block, never the full matrix
RESULT_FILE = "near_duplicates.json"
SPLIT_ORDER = ("train", "val", "test")


def find(dataset: Dataset, features: torch.Tensor, threshold: float = THRESHOLD, max_pairs: int = MAX_PAIRS,
         chunk: int = CHUNK) -> list[dict]:
    """Pairs of images in different splits with cosine similarity >= threshold, most similar first.

    features[i] belongs to dataset.samples[i]; half-precision features are promoted, float64 stays float64.
    """
    samples = dataset.samples
    if len(samples) != len(features):
        raise ValueError(f"{len(features)} feature rows for {len(samples)} images: compute the features again.")
    feats = torch.nn.functional.normalize(features.detach().to(torch.promote_types(features.dtype, torch.float32)),
                                          dim=1)
    codes = {name: k for k, name in enumerate(dict.fromkeys(s.split for s in samples))}
    split = torch.tensor([codes[s.split] for s in samples], dtype=torch.long)
    n = len(samples)
    sims, rows, cols = feats.new_empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = feats[start:stop] @ feats[start:].T  # each pair once: columns from this block's first row on
        upper = torch.arange(n - start)[None, :] > torch.arange(stop - start)[:, None]
        keep = (block >= threshold) & upper & (split[start:stop, None] != split[None, start:])
        r, c = keep.nonzero(as_tuple=True)
        sims, rows, cols = _top(torch.cat([sims, block[r, c]]), torch.cat([rows, r + start]),
                                torch.cat([cols, c + start]), max_pairs)
    return [_pair(dataset, i, j, s) for s, i, j in zip(sims.tolist(), rows.tolist(), cols.tolist())]


def _top(sims: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, k: int):
    """The k best by (similarity desc, row, col): stable sorts, so any chunk size ranks ties the same way."""
    order = torch.argsort(cols, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    order = order[torch.argsort(-sims[order], stable=True)][:k]
    return sims[order], rows[order], cols[order]


def _pair(dataset: Dataset, i: int, j: int, similarity: float) -> dict:
    a, b = dataset.samples[i], dataset.samples[j]
    if _rank(b.split) < _rank(a.split):  # the training copy first: it is the one the model saw
        a, b = b, a
    return {"a": a.path, "b": b.path, "split_a": a.split, "split_b": b.split,
            "class_a": dataset.classes[a.label], "class_b": dataset.classes[b.label],
            "similarity": round(similarity, 4), "different_class": a.label != b.label}


def _rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def measured_config(config: RunConfig) -> RunConfig:
    """config's data, split and resources with the backbone and preprocessing THRESHOLD was measured on:
    another backbone's (or random weights') similarities are on another scale."""
    checked = copy.deepcopy(config)
    checked.model, checked.augment = ModelConfig(), AugmentConfig()
    return checked


def settings(config: RunConfig) -> dict:
    """What a result depends on: the data and its split, the backbone and the preprocessing."""
    aug = config.augment
    return {"data": asdict(config.data), "backbone": config.model.backbone, "weights": config.model.weights,
            "image_size": aug.image_size, "resize": aug.resize, "crop_pct": aug.crop_pct}


def write(job_dir: Path, pairs: list[dict], threshold: float = THRESHOLD) -> None:
    """The result, with the settings of the job that made it (job.json), so the same check is found again."""
    job_dir = Path(job_dir)
    spec = read_json(job_dir / "job.json") or {}
    counts = {"pairs": len(pairs), "different_class": sum(p["different_class"] for p in pairs)}
    for k, first in enumerate(SPLIT_ORDER):
        for second in SPLIT_ORDER[k + 1:]:
            counts[f"{first}-{second}"] = sum((p["split_a"], p["split_b"]) == (first, second) for p in pairs)
    write_json(job_dir / RESULT_FILE, {
        "threshold": threshold, "max_pairs": MAX_PAIRS, "truncated": len(pairs) >= MAX_PAIRS, "counts": counts,
        "settings": settings(RunConfig.from_dict(spec["config"])) if "config" in spec else None,
        "written_at": time.time(), "pairs": pairs})


def read(job_dir: Path) -> dict | None:
    return read_json(Path(job_dir) / RESULT_FILE)


def previous(root: Path, config: RunConfig) -> Path | None:
    """The newest finished check under root (workspace/leakage) of the same data, split and backbone."""
    wanted = settings(config)
    for path in sorted(Path(root).glob(f"*/{RESULT_FILE}"), reverse=True):  # job ids start with the time
        result = read_json(path)
        if result and result.get("settings") == wanted:
            return path.parent
    return None
