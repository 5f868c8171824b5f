"""AugmentConfig -> torchvision.transforms.v2 pipelines.

Inputs are decoded tensors (uint8, or float in [0, 1] for high bit depths); both leave as normalised float32.
Normalisation belongs to the backbone's weights, so mean and std are passed in, never global.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from core.config import AugmentConfig

RESIZE_MODES = ("crop", "squash", "pad")


class Letterbox(torch.nn.Module):
    """Fit the longer side, pad the rest with black: keeps every pixel and the aspect ratio."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = F.resize(img, [nh, nw], antialias=True)
        left, top = (self.size - nw) // 2, (self.size - nh) // 2
        return F.pad(img, [left, top, self.size - nw - left, self.size - nh - top], fill=0)


def _fit(aug: AugmentConfig) -> list[torch.nn.Module]:
    """Deterministic resize to a square of image_size, by the chosen mode."""
    size = aug.image_size
    if aug.resize == "crop":
        return [v2.Resize(aug.resize_side(), antialias=True), v2.CenterCrop(size)]
    if aug.resize == "squash":
        return [v2.Resize((size, size), antialias=True)]
    if aug.resize == "pad":
        return [Letterbox(size)]
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {aug.resize!r}")


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[torch.nn.Module]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def eval_transform(aug: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose(_fit(aug) + _finish(mean, std))


def train_transform(aug: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    size = aug.image_size
    steps: list[torch.nn.Module] = []
    if aug.crop_scale_min < 1:
        if aug.resize != "crop":
            steps += _fit(aug)  # squash/pad first so the crop sees the whole frame
        steps.append(v2.RandomResizedCrop(size, scale=(aug.crop_scale_min, 1.0), antialias=True))
    else:
        steps += _fit(aug)
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.rotation:
        steps.append(v2.RandomRotation(aug.rotation))
    if aug.color_jitter or aug.hue:
        j = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=aug.hue))
    if aug.grayscale:
        steps.append(v2.RandomGrayscale(aug.grayscale))
    if aug.blur:
        kernel = max(3, (size // 20) | 1)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=aug.blur))
    steps += _finish(mean, std)
    if aug.erasing:
        steps.append(v2.RandomErasing(aug.erasing))
    return v2.Compose(steps)


def denormalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Back to [0, 1] for showing a person what the network sees."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    return (batch * s + m).clamp(0, 1)


def preview(images: Sequence[torch.Tensor], aug: AugmentConfig, mean: Sequence[float], std: Sequence[float],
            copies: int = 4, seed: int = 0) -> list[list[torch.Tensor]]:
    """Each image augmented `copies` times, back in [0, 1]: what the network will see while training."""
    tf = train_transform(aug, mean, std)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return [[denormalize(tf(img), mean, std) for _ in range(copies)] for img in images]
    finally:
        torch.set_rng_state(generator_state)
