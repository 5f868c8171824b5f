"""Near-duplicates across splits: planted copies are listed, copies within one split are not, results are found again."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import RunConfig
from core.data.validation import Dataset, Report, Sample
from core.evaluate import leakage
from core.runs import write_json
from core.train.engine import dataset_features

pytestmark = pytest.mark.unit

SPLITS = ["train"] * 20 + ["val"] * 12 + ["test"] * 8


def synthetic(n=40, dim=64, seed=0):
    """Random features (nearly orthogonal in 64 dimensions) with three planted copies."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, dim, generator=g)
    feats[25] = 3.0 * feats[3] + 0.05 * torch.randn(dim, generator=g)  # train 3 -> val 25, same class, scaled
    feats[34] = feats[12] + 0.3 * torch.randn(dim, generator=g)  # train 12 -> test 34, another class: less close
    feats[6] = feats[5]  # both train: not leakage
    samples = [Sample(f"{'ab'[i % 2]}/{i}.png", i % 2, SPLITS[i]) for i in range(n)]
    samples[34] = Sample("b/34.png", 1, "test")
    samples[12] = Sample("a/12.png", 0, "train")
    report = Report("folders", {"a": 20, "b": 20}, {}, {}, {}, {})
    return Dataset("k", Path("/nowhere"), ["a", "b"], samples, report), feats


def cosine(feats, i, j):
    return float(torch.nn.functional.cosine_similarity(feats[i], feats[j], dim=0))


def test_only_cross_split_copies_are_listed_most_similar_first():
    dataset, feats = synthetic()
    pairs = leakage.find(dataset, feats, threshold=0.9)
    assert [(p["a"], p["b"]) for p in pairs] == [("b/3.png", "b/25.png"), ("a/12.png", "b/34.png")]
    first, second = pairs
    assert (first["split_a"], first["split_b"], first["class_a"], first["class_b"]) == ("train", "val", "b", "b")
    assert first["similarity"] == pytest.approx(cosine(feats, 3, 25), abs=1e-4)
    assert second["similarity"] == pytest.approx(cosine(feats, 12, 34), abs=1e-4) and second["similarity"] < first["similarity"]
    assert not first["different_class"] and second["different_class"]  # a mislabel or an ambiguous copy


def test_chunks_give_the_answer_of_one_block_and_the_list_is_bounded():
    dataset, feats = synthetic()
    feats = feats.double()  # float32 sums in another block shape may differ in the last bit; float64 ones do not matter
    whole = leakage.find(dataset, feats, threshold=0.0, chunk=10_000)
    assert len(whole) > 50  # low threshold: many pairs, so the chunk borders matter
    assert leakage.find(dataset, feats, threshold=0.0, chunk=7) == whole
    assert leakage.find(dataset, feats, threshold=0.0, chunk=7, max_pairs=5) == whole[:5]


def test_result_is_found_again_for_the_same_data_and_split_only(tmp_path):
    dataset, feats = synthetic()
    config = leakage.measured_config(RunConfig())
    config.data.source = "/ws/datasets/k/data"
    job_dir = tmp_path / "leakage" / "20250101-000000-abcdef"
    job_dir.mkdir(parents=True)
    write_json(job_dir / "job.json", {"kind": "leakage", "config": config.to_dict()})
    leakage.write(job_dir, leakage.find(dataset, feats, threshold=0.9), threshold=0.9)

    result = leakage.read(job_dir)
    assert result["threshold"] == 0.9 and len(result["pairs"]) == 2
    assert result["counts"] == {"pairs": 2, "different_class": 1, "train-val": 1, "train-test": 1, "val-test": 0}
    assert leakage.previous(tmp_path / "leakage", config) == job_dir
    other = leakage.measured_config(config)
    other.data.split_seed = 1
    assert leakage.previous(tmp_path / "leakage", other) is None
    assert leakage.previous(tmp_path / "absent", config) is None


def test_measured_config_keeps_the_data_and_uses_the_measured_backbone():
    config = RunConfig()
    config.data.source, config.data.val_ratio = "/data", 0.3
    config.model.backbone, config.model.weights, config.augment.image_size = "resnet18", "random", 64
    checked = leakage.measured_config(config)
    assert checked.data == config.data
    assert (checked.model.backbone, checked.model.weights, checked.augment.image_size) == (
        "efficientnet_lite0", "pretrained", 224)


def pattern(seed: int, size=64) -> Image.Image:
    """A blocky random picture: each seed its own layout, unlike the one-colour noise of make_dataset."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.BILINEAR)


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_a_reencoded_copy_in_val_is_found_from_real_features(tmp_path, workspace):
    root = tmp_path / "data"
    for s, (split, n) in enumerate((("train", 8), ("val", 4))):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                (root / split / name / f"{i}.jpg").write_bytes(jpeg(pattern(100 * s + 10 * c + i), 95))
    original = root / "train" / "cat" / "0.jpg"
    (root / "val" / "cat" / "copy.jpg").write_bytes(jpeg(Image.open(original), 60))  # other bytes, same picture
    (root / "train" / "dog" / "copy.jpg").write_bytes(jpeg(Image.open(root / "train" / "dog" / "1.jpg"), 60))

    config = RunConfig()
    config.data.source, config.threads = str(root), 1
    config.model.backbone, config.model.weights, config.augment.image_size = "resnet18", "random", 32
    dataset, feats = dataset_features(config)
    pairs = leakage.find(dataset, feats)

    assert (pairs[0]["a"], pairs[0]["b"]) == ("train/cat/0.jpg", "val/cat/copy.jpg")
    assert pairs[0]["similarity"] > 0.99 and not pairs[0]["different_class"]
    listed = {frozenset((p["a"], p["b"])) for p in pairs}
    assert frozenset(("train/dog/1.jpg", "train/dog/copy.jpg")) not in listed  # a copy within train leaks nothing
    assert [p["similarity"] > 0.99 for p in pairs].count(True) == 1
