"""Fine-tuning strategies as freeze plans and per-group learning rates over a backbone's layer groups.

- full: every group trains at the base rate.
- linear-probe: only the head trains (a frozen feature extractor with a new head).
- partial: the first `freeze_groups` groups stay frozen.
- layerwise: all train; a group's rate is the head's times lr_decay ** (its distance from the head).
- gradual: the head first, then one more group from the top every `unfreeze_every` epochs.
All parameters sit in the optimizer from the start; a frozen one simply has no gradient, so gradual
unfreezing needs no new optimizer and resume needs no special case.
"""
from __future__ import annotations

from torch import nn

from core.models.backbones import Backbone, group_of, group_sizes, in_group
from core.config import ModelConfig

STRATEGIES = ("auto", "full", "linear-probe", "partial", "layerwise", "gradual")


def trainable_groups(cfg: ModelConfig, n_groups: int, epoch: int = 1) -> list[bool]:
    """Which groups train in `epoch` (1-based); the head (last group) always does."""
    head = n_groups - 1
    if cfg.strategy in ("full", "layerwise"):
        first = 0
    elif cfg.strategy == "linear-probe":
        first = head
    elif cfg.strategy == "partial":
        first = min(max(cfg.freeze_groups, 0), head)
    elif cfg.strategy == "gradual":
        unfrozen = 1 + (epoch - 1) // max(cfg.unfreeze_every, 1)
        first = max(head + 1 - unfrozen, 0)
    else:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
    return [i >= first for i in range(n_groups)]


def group_lrs(cfg: ModelConfig, base_lr: float, n_groups: int) -> list[float]:
    if cfg.strategy != "layerwise":
        return [base_lr] * n_groups
    return [base_lr * cfg.lr_decay ** (n_groups - 1 - i) for i in range(n_groups)]


def apply_freeze(model: nn.Module, backbone: Backbone, trainable: list[bool]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(trainable[group_of(backbone, name)])


def set_train_mode(model: nn.Module, backbone: Backbone, trainable: list[bool], train_frozen_bn: bool) -> None:
    """model.train(), except frozen groups run as at inference: their dropout and stochastic depth would only add
    noise to features nothing there learns from, and their batch norm keeps its pretrained running statistics
    (unless train_frozen_bn)."""
    model.train()
    frozen = tuple(p for (_, prefixes), t in zip(backbone.groups, trainable) if not t for p in prefixes)
    for name, module in model.named_modules():  # parents before children, so a child's own setting wins
        if in_group(name, frozen):
            module.train(train_frozen_bn and isinstance(module, nn.modules.batchnorm._BatchNorm))


# Besides norms and biases (ndim <= 1): tables that encode positions, not features, as torchvision's reference
# training recipe exempts them (ViT's class token and position embedding, Swin's relative-position bias).
NO_DECAY = ("class_token", "pos_embedding", "relative_position_bias_table")


def param_groups(model: nn.Module, backbone: Backbone, cfg: ModelConfig, base_lr: float,
                 weight_decay: float) -> list[dict]:
    """Optimizer groups per layer group, split so decay never touches norm layers, biases and position tables."""
    lrs = group_lrs(cfg, base_lr, len(backbone.groups))
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        decays = p.ndim > 1 and name.rpartition(".")[2] not in NO_DECAY
        buckets.setdefault((group_of(backbone, name), decays), []).append(p)
    groups = []
    for (i, decays), params in sorted(buckets.items()):
        groups.append({"params": params, "lr": lrs[i], "weight_decay": weight_decay if decays else 0.0,
                       "name": backbone.groups[i][0], "group": i})
    return groups


def describe(model: nn.Module, backbone: Backbone, cfg: ModelConfig, base_lr: float, epoch: int = 1) -> list[dict]:
    """Per group: parameters, whether it trains in `epoch`, and its learning rate (0 when frozen)."""
    return plan(group_sizes(backbone, model), backbone, cfg, base_lr, epoch)


def plan(sizes: list[int], backbone: Backbone, cfg: ModelConfig, base_lr: float, epoch: int = 1) -> list[dict]:
    """describe() from known group sizes: the Model page redraws it on every change without a model."""
    trainable = trainable_groups(cfg, len(backbone.groups), epoch)
    lrs = group_lrs(cfg, base_lr, len(backbone.groups))
    return [{"group": g, "params": n, "trainable": t, "trainable_params": n if t else 0, "lr": lr if t else 0.0}
            for (g, _), n, t, lr in zip(backbone.groups, sizes, trainable, lrs)]


def resolve_strategy(cfg: ModelConfig, n_groups: int, pretrained: bool) -> tuple[str, str]:
    """The strategy a run uses, and a sentence when it is worth saying why.

    'auto' is a linear probe on pretrained weights and full fine-tuning on random ones: a head trained on random
    features learns little (resnet18 on handwritten digits: 0.79 against 0.96 for full training). A frozen
    strategy chosen explicitly stays, with a warning.
    """
    if cfg.strategy == "auto":
        if pretrained:
            return "linear-probe", "Automatic strategy: the weights are pretrained, so the backbone stays frozen and a new head trains (linear probe)."
        return "full", ("Automatic strategy: the weights are random (no pretrained weights for this backbone here), so "
                        "every layer trains (full fine-tuning); a frozen random backbone gives features worth little.")
    if not pretrained and not all(trainable_groups(cfg, n_groups, 1)):
        return cfg.strategy, (f"The {cfg.strategy} strategy freezes layers of a randomly initialised backbone, whose "
                              "features are random: expect low accuracy. Choose full fine-tuning or 'auto' unless "
                              "this is what you want.")
    return cfg.strategy, ""
