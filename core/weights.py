"""Where a backbone's starting weights come from, and a record of it for the run.

Only tensors are ever read from a file: safetensors, or torch.load(weights_only=True) which refuses pickled
code. Every resolved source is recorded (source, file, sha256) so a run can be repeated and audited.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .backbones import Backbone


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names what is wrong."""


@dataclass
class WeightsInfo:
    source: str  # torchvision-cache | file | random
    file: str | None = None
    sha256: str | None = None
    note: str = ""

    @property
    def pretrained(self) -> bool:
        return self.source != "random"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(backbone: Backbone, request: str) -> tuple[dict[str, torch.Tensor] | None, WeightsInfo]:
    """`pretrained`, `random` or a file path -> (state dict or None, what was used)."""
    if request == "random":
        return None, WeightsInfo("random", note="random initialisation, as requested")
    if request == "pretrained":
        cached = torchvision_cache_file(backbone)
        if cached is not None and cached.exists():
            return read_state_file(cached), WeightsInfo("torchvision-cache", str(cached), sha256_file(cached))
        where = cached.parent if cached else "no torchvision weights for this backbone"
        return None, WeightsInfo(
            "random",
            note=f"Pretrained weights for {backbone.name} are not on this machine (looked in {where}); "
                 "training from random initialisation, so expect much lower accuracy.",
        )
    path = Path(request).expanduser()
    return read_state_file(path), WeightsInfo("file", str(path), sha256_file(path))


def torchvision_cache_file(backbone: Backbone) -> Path | None:
    """Where torch.hub keeps torchvision's download of this backbone's weights (TORCH_HOME aware)."""
    if backbone.tv_weights is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(backbone.tv_weights.url)


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: a pickle carrying code is refused, not run."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path.name} is not a weights file this app can read safely ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path.name} does not hold a state dict of tensors")
    return state


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
