"""Grad-CAM: where in an image the model found the evidence for a class.

The map is the backbone's last convolutional feature map (its `cam_layer`), each channel weighted by the mean
gradient of the class score with respect to it (Selvaraju et al., 2017). Gradients are taken with respect to
that activation only, so a frozen backbone works, and the model's weights never receive a `.grad`.

The map is computed on a private copy of the model: the one passed in is shared (the server caches one model per
run for every session, and the Predict page may be running it at this moment), so it is never hooked or switched.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.models.backbones import REGISTRY, Backbone

# A jet-like ramp, cold to hot: (position, RGB) stops, interpolated linearly.
_STOPS = (0.0, 0.11, 0.34, 0.65, 0.89, 1.0)
_COLOURS = ((0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0))


class SaliencyError(ValueError):
    """Grad-CAM cannot be shown for this backbone; the message is a sentence for a person."""


def supported(backbone: Backbone) -> bool:
    return backbone.cam_layer is not None


def grad_cam(model: nn.Module, backbone: Backbone, x: torch.Tensor, target: int | None = None) -> torch.Tensor:
    """An (H, W) map in [0, 1] over one normalised image (3, H, W) or (1, 3, H, W), for `target` (default: the
    predicted class); 0 everywhere when nothing in the image speaks for it.

    Runs in eval mode, as predictions do, on a copy: the model passed in is only read, so another thread may use
    it meanwhile.
    """
    if not supported(backbone):
        raise SaliencyError(_unsupported_message(backbone))
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected one image as (3, H, W) or (1, 3, H, W), got shape {tuple(x.shape)}")
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        # A fresh leaf: autograd reaches it whether or not any weight requires grad. The clone keeps it intact
        # when the forward modifies the map in place (densenet's final ReLU).
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    private = copy.deepcopy(model).eval()
    private.get_submodule(backbone.cam_layer).register_forward_hook(capture)
    with torch.enable_grad():
        logits = private(x.detach().to(next(private.parameters()).device))
        classes = logits.shape[1]
        target = int(logits[0].argmax()) if target is None else target
        if not 0 <= target < classes:
            raise ValueError(f"target class {target} does not exist: the model has {classes} classes")
        activation = captured[0]
        (grad,) = torch.autograd.grad(logits[0, target], activation)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    return (cam / peak if peak > 0 else torch.zeros_like(cam)).cpu()


def overlay(image: Image.Image, cam: torch.Tensor, alpha: float = 0.45) -> Image.Image:
    """The map as a heatmap over the picture, which must be the one the network saw (after the evaluation
    resize and crop), or the colours land beside what they mark."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    resized = Image.fromarray(cam.detach().cpu().numpy().astype(np.float32)).resize(
        image.size, Image.Resampling.BILINEAR)
    values = np.asarray(resized)
    heat = np.stack([np.interp(values, _STOPS, [c[i] for c in _COLOURS]) for i in range(3)], axis=-1)
    blended = (1 - alpha) * rgb + alpha * heat
    return Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8), "RGB")


def _unsupported_message(backbone: Backbone) -> str:
    choices = ", ".join(name for name, b in REGISTRY.items() if supported(b))
    return (f"Grad-CAM is not available for {backbone.name}: it needs the feature map of a convolutional network, "
            f"and {backbone.name} is a transformer, which reads the image as a sequence of patches instead. "
            f"Saliency maps work with the convolutional backbones: {choices}.")
