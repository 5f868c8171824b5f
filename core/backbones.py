"""Backbone registry: name -> architecture builder, layer groups, head, input size, normalisation.

Like timm's `register_model`: each entry is a small function, and everything else (freezing, layer-wise
rates, Grad-CAM, exports) works from what the entry declares rather than from per-model special cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Groups = Callable[[nn.Module], list[tuple[str, list[nn.Module]]]]


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]  # the architecture, randomly initialised, with its original head
    groups: Groups  # input to output; the last group is the head
    head: str  # dotted path of the final Linear, replaced by one sized to the dataset
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tv_weights: WeightsEnum | None = None  # torchvision's weights and their metadata


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
    """The architecture, its pretrained state when given, and a new head for `num_classes`."""
    model = backbone.build()
    if state is not None:
        model.load_state_dict(state)
    old = model.get_submodule(backbone.head)
    new: nn.Module = nn.Linear(old.in_features, num_classes)
    if dropout > 0:
        new = nn.Sequential(nn.Dropout(dropout), new)
    set_submodule(model, backbone.head, new)
    return model


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _resnet_groups(m: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    return [("stem", [m.conv1, m.bn1]), ("stage 1", [m.layer1]), ("stage 2", [m.layer2]),
            ("stage 3", [m.layer3]), ("stage 4", [m.layer4]), ("head", [m.fc])]


def _mobilenet_v3_small_groups(m: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    f = m.features  # stages end where the resolution halves: blocks 1 | 2-3 | 4-8 | 9-11, then the last conv
    return [("stem", [f[0]]), ("stage 1", [f[1]]), ("stage 2", list(f[2:4])), ("stage 3", list(f[4:9])),
            ("stage 4", list(f[9:12]) + [f[12]]), ("head", [m.classifier])]


register(Backbone("resnet18", models.resnet18, _resnet_groups, "fc",
                  tv_weights=models.ResNet18_Weights.IMAGENET1K_V1))
register(Backbone("mobilenet_v3_small", models.mobilenet_v3_small, _mobilenet_v3_small_groups, "classifier.3",
                  tv_weights=models.MobileNet_V3_Small_Weights.IMAGENET1K_V1))
