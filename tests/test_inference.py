"""Inference engines: every backbone runs in onnxruntime and agrees with eager PyTorch; a failing engine gives way;
feature extraction and decoding as a run uses them."""
import json

import pytest
import torch
from torch import nn

from conftest import make_dataset
from core.config import RunConfig
from core.data.augment import eval_transform
from core.data.loaders import DecodingLoader, ImageDataset, make_loader
from core.data.validation import load_dataset
from core.models import backbones, inference
from core.train import features
from core.train.engine import fit

pytestmark = pytest.mark.integration

CPU = torch.device("cpu")


def inputs(backbone, n=3, seed=0):
    size = backbone.input_size if backbone.fixed_size else 64
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(backbones.REGISTRY))
def test_every_backbone_runs_in_onnxruntime_within_the_tolerance_of_pytorch(name):
    backbone = backbones.get(name)
    model = backbones.build_model(backbone, 3, 0.0).eval()
    x = inputs(backbone, seed=1)
    run = inference.runner(model, "auto", CPU, x[:2])
    assert run.engine == "onnxruntime" and run.note == ""
    with torch.no_grad():
        expected = model(x)
    assert (run(x) - expected).abs().max() <= inference.TOLERANCE * max(1.0, float(expected.abs().max()))
    assert run(x[:1]).shape == (1, 3)  # any batch size, not only the example's


class Broken(Exception):
    pass


def test_an_engine_that_fails_or_disagrees_gives_way_and_says_why(monkeypatch):
    model = backbones.build_model(backbones.get("resnet18"), 2, 0.0).eval()
    x = inputs(backbones.get("resnet18"))

    def cannot(module, device, example):
        raise Broken("no kernel for this layer")
    monkeypatch.setitem(inference.BUILDERS, "onnxruntime", cannot)
    run = inference.runner(model, "auto", CPU, x)
    assert run.engine == "channels_last" and "onnxruntime could not run this network (no kernel" in run.note
    with torch.no_grad():
        assert torch.allclose(run(x), model(x), atol=1e-4)
    monkeypatch.setitem(inference.BUILDERS, "channels_last", lambda m, d, e: lambda images: m(images) + 1)
    run = inference.runner(model, "channels_last", CPU, x)
    assert run.engine == "eager" and "channels_last differed from PyTorch by 1" in run.note
    with pytest.raises(ValueError, match="engine must be one of"):
        inference.resolve("tensorrt", CPU)


def test_the_decoding_loader_gives_the_dataloaders_batches_in_order(tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 7, "blue": 6})
    dataset = load_dataset(str(data), tmp_path / "ws", RunConfig().data)
    images = ImageDataset(dataset.data_dir, dataset.samples, eval_transform(RunConfig().augment, (0.5,) * 3,
                                                                             (0.5,) * 3), 32)
    ours, theirs = list(DecodingLoader(images, 4, 2)), list(make_loader(images, 4, False))
    assert len(DecodingLoader(images, 4, 2)) == len(ours) == 4
    for (x, y), (x2, y2) in zip(ours, theirs, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    it = iter(DecodingLoader(images, 4, 2))
    next(it)
    it.close()  # a stop mid-way: the pool shuts down, nothing hangs
    (dataset.data_dir / dataset.samples[5].path).write_bytes(b"not an image any more")
    with pytest.raises(Exception, match="image"):
        list(DecodingLoader(images, 4, 2))


def test_features_agree_across_engines_and_the_run_records_its_engine(tmp_path, workspace):
    data = make_dataset(tmp_path / "data", {"red": 6, "blue": 6})
    config = RunConfig()
    config.data.source, config.data.val_ratio = str(data), 0.34
    config.model.backbone, config.model.weights, config.augment.image_size = "resnet18", "random", 32
    config.model.strategy = "linear-probe"  # on cached features, which the engine computes
    config.threads = 1
    dataset = load_dataset(str(data), workspace, config.data)
    backbone = backbones.get("resnet18")
    images = ImageDataset(dataset.data_dir, dataset.samples, eval_transform(config.augment, backbone.mean,
                                                                             backbone.std), 32)
    model = backbones.build_model(backbone, 2, 0.0)
    fast, used = features.extract(model, backbone, DecodingLoader(images, 5, 1), CPU, "onnxruntime")
    slow, eager = features.extract(model, backbone, DecodingLoader(images, 5, 1), CPU, "eager")
    assert (used, eager) == ("onnxruntime", "eager") and fast.shape == slow.shape == (12, 512)
    assert (fast - slow).abs().max() <= inference.TOLERANCE * max(1.0, float(slow.abs().max()))
    assert isinstance(model.fc, nn.Linear)  # the head is back in place
    _, small = features.extract(model, backbone, DecodingLoader(images, 5, 1), CPU, "auto")
    assert small == "eager"  # 12 images of 32 px: less work than an export costs
    assert inference.resolve("auto", CPU, inference.SMALL_WORK) == "onnxruntime"
    config.engine = "onnxruntime"
    fit(config, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["engine"] == "onnxruntime" and written["provenance"]["features"] == {"engine": "onnxruntime"}
    config.engine = "channels_last"  # a second run reuses the cached features and says so
    fit(config, tmp_path / "again")
    written = json.loads((tmp_path / "again" / "config.json").read_text())
    assert written["engine"] == "channels_last" and written["provenance"]["features"] == {"engine": "cached"}
