"""Where a backbone's starting weights come from, checked, and a record of it for the run.

Sources, tried in order for "pretrained": the backbone library's local cache, then a download when the
network answers; else random initialisation, said plainly. A file (or a run folder) can be given instead.
Only tensors are ever read from a file: safetensors, or torch.load(weights_only=True), which refuses
pickled code. Every source is recorded (source, file, sha256) so a run can be repeated and audited.
"""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file

from .backbones import Backbone, in_group

PREFIXES = ("module.", "model.")  # DataParallel/DDP and Lightning wrappers


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names what is wrong."""


@dataclass
class WeightsInfo:
    source: str  # torchvision-cache | download | file | random
    file: str | None = None
    sha256: str | None = None
    note: str = ""

    @property
    def pretrained(self) -> bool:
        return self.source != "random"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(backbone: Backbone, request: str) -> tuple[dict[str, torch.Tensor] | None, WeightsInfo]:
    """`pretrained`, `random`, a weights file or a run folder -> (checked state dict or None, what was used)."""
    if request == "random":
        return None, WeightsInfo("random", note="random initialisation, as requested")
    if request == "pretrained":
        cached = torchvision_cache_file(backbone)
        if cached is None:
            return None, WeightsInfo("random", note=f"{backbone.name} has no pretrained weights source; "
                                                    "training from random initialisation.")
        source = "torchvision-cache"
        if not cached.exists():
            if not network_available(backbone.tv_weights.url):
                return None, WeightsInfo("random", note=offline_message(backbone, cached.parent))
            download(backbone.tv_weights.url, cached)
            source = "download"
        return match_state(backbone, read_state_file(cached)), WeightsInfo(source, str(cached), sha256_file(cached))
    path = Path(request).expanduser()
    if path.is_dir():  # continue training from a run's own weights
        path = path / "model.safetensors"
    return match_state(backbone, read_state_file(path)), WeightsInfo("file", str(path), sha256_file(path))


def offline_message(backbone: Backbone, where: Path) -> str:
    return (f"Pretrained weights for {backbone.name} are not on this machine (looked in {where}) and the "
            "download server cannot be reached. Training from random initialisation, so expect much lower "
            "accuracy. Two ways forward: import a weights file for this backbone (--weights FILE, or Import "
            "on the Model page), or choose a backbone whose weights are installed.")


def match_state(backbone: Backbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check a state dict against the architecture; the head may differ (it is replaced anyway).

    Refused with the names that differ: missing tensors, unexpected ones, and shape mismatches.
    """
    state = {_strip(k): v for k, v in state.items()}
    own = backbone.build().state_dict()
    head = (backbone.head,)
    body = [k for k in own if not in_group(k, head)]
    missing = [k for k in body if k not in state]
    shapes = [f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
              for k in body if k in state and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own and not in_group(k, head)]
    if missing or shapes or unexpected:
        parts = [f"{len(missing)} missing: {_few(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {_few(unexpected)}" if unexpected else "",
                 f"{len(shapes)} with other shapes: {_few(shapes)}" if shapes else ""]
        raise WeightsError(f"This file does not fit {backbone.name}: " + "; ".join(p for p in parts if p) +
                           ". Is it for another backbone?")
    return state


def install(backbone: Backbone, path: Path) -> Path:
    """Copy a checked file where the library's cache looks, so later runs find it as pretrained."""
    target = torchvision_cache_file(backbone)
    if target is None:
        raise WeightsError(f"{backbone.name} has no library cache to install into")
    state = match_state(backbone, read_state_file(path))
    own = backbone.build().state_dict()
    if any(k not in state or state[k].shape != own[k].shape for k in own):
        raise WeightsError("Only a complete checkpoint, ImageNet head included, can be installed as the "
                           "pretrained weights; use it with --weights FILE instead.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)
    return target


def torchvision_cache_file(backbone: Backbone) -> Path | None:
    """Where torch.hub keeps torchvision's download of this backbone's weights (TORCH_HOME aware)."""
    if backbone.tv_weights is None:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(backbone.tv_weights.url)


def network_available(url: str, timeout: float = 3.0) -> bool:
    """Does the weights server answer? Offline machines fail fast here instead of hanging in a download."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def download(url: str, target: Path) -> None:
    """torch.hub's download, with its progress bar and the hash check torchvision's file names carry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = Path(urlparse(url).path).stem
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else None
    torch.hub.download_url_to_file(url, str(target), hash_prefix=prefix, progress=True)


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


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
