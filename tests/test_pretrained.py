"""Packaged ImageNet weights: mapped and checked, the default everywhere, and really pretrained."""
from pathlib import Path

import pytest
import torch

from core.models import backbones, strategies
from core.train import features
from core.data.augment import eval_transform
from core.config import AugmentConfig, RunConfig
from core.data.images import decode_image
from core.models.weights import WeightsError, map_in_order, resolve, sha256_file

pytestmark = pytest.mark.integration

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
ANT, BEE = 310, 309  # ImageNet class indices


@pytest.fixture(autouse=True)
def empty_library_caches(tmp_path, monkeypatch):
    """No timm or torch hub cache: the packaged file is what is found."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_defaults_are_the_packaged_backbone_on_the_fast_path():
    config = RunConfig()
    assert config.model.backbone == "efficientnet_lite0" and config.model.weights == "pretrained"
    assert config.model.strategy == "auto"
    b = backbones.get(config.model.backbone)
    _, info = resolve(b, config.model.weights)
    config.model.strategy, _ = strategies.resolve_strategy(config.model, len(b.groups), info.pretrained)
    assert config.model.strategy == "linear-probe" and features.why_not(config) is None


@pytest.mark.parametrize("name", LITES)
def test_packaged_weights_resolve_with_provenance(name):
    b = backbones.get(name)
    state, info = resolve(b, "pretrained")
    assert info.source == "packaged" and info.pretrained
    assert Path(info.file).is_file() and info.sha256 == sha256_file(Path(info.file))
    model = backbones.build_model(b, 2, state=state)
    raw = torch.load(info.file, weights_only=True)
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, raw["_bn1.running_var"])  # last norm: the order mapping holds
    assert b.mean == b.std == (0.5, 0.5, 0.5) and b.input_size == {0: 224, 1: 240, 2: 260}[LITES.index(name)]


def test_a_file_that_does_not_line_up_is_refused_with_names():
    b = backbones.get("efficientnet_lite0")
    state = dict(torch.load(b.packaged(), weights_only=True))
    state["_conv_stem.weight"] = torch.zeros(32, 1, 3, 3)
    with pytest.raises(WeightsError, match=r"_conv_stem.weight \[32, 1, 3, 3\] vs conv_stem.weight \[32, 3, 3, 3\]"):
        map_in_order(b, state)
    state.pop("_fc.bias")
    with pytest.raises(WeightsError, match="295 tensors, the model 296"):
        map_in_order(b, state)


@pytest.mark.parametrize("name", LITES)
def test_imagenet_head_sees_ants_and_bees(name, hymenoptera):
    """The proof that weights and preprocessing are right: the untouched 1000-class head names the insect."""
    b = backbones.get(name)
    state, _ = resolve(b, "pretrained")
    model = b.build()
    model.load_state_dict(state)
    model.eval()
    aug = AugmentConfig(image_size=b.input_size)
    tf = eval_transform(aug, b.mean, b.std)
    for cls, index in (("ants", ANT), ("bees", BEE)):
        files = sorted((hymenoptera / "val" / cls).iterdir())[::2]  # about 38 photos of each: a wrong input is near 0%
        with torch.no_grad():
            top = torch.cat([model(torch.stack([tf(decode_image(f, aug.resize_side())) for f in files[i:i + 40]]))
                             .argmax(1) for i in range(0, len(files), 40)])
        share = (top == index).float().mean().item()
        assert share > 0.75, f"{name}: only {share:.0%} of val/{cls} ranked {cls} first"
