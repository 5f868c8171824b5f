"""Where a backbone's starting weights come from, checked, and a record of it for the run.

Sources, tried in order for "pretrained": the backbone library's local cache, then a download when the
network answers; else random initialisation, said plainly. A file (or a run folder) can be given instead.
Only tensors are ever read from a file: safetensors, or torch.load(weights_only=True), which refuses
pickled code. Every source is recorded (source, file, sha256) so a run can be repeated and audited.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file

from core import runs
from core.models.backbones import Backbone, in_group

PREFIXES = ("module.", "model.")
HF_FILE = "model.safetensors"  # DataParallel/DDP and Lightning wrappers


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names what is wrong."""


@dataclass
class WeightsInfo:
    source: str  # torchvision-cache | timm-cache | packaged | download | file | random
    file: str | None = None
    sha256: str | None = None
    note: str = ""

    @property
    def pretrained(self) -> bool:
        return self.source != "random"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(backbone: Backbone, request: str) -> tuple[dict[str, torch.Tensor] | None, WeightsInfo]:
    """`pretrained`, `random`, a weights file or a run folder -> (checked state dict or None, what was used).

    `pretrained` tries, in order: the backbone library's cache, a packaged weights file, a download when the
    server answers; and otherwise trains from random initialisation, saying so.
    """
    if request == "random":
        return None, WeightsInfo("random", note="random initialisation, as requested")
    if request != "pretrained":
        path = Path(request).expanduser()
        if path.is_dir():  # continue training from a run's own weights
            path = path / "model.safetensors"
        return _checked(backbone, path, "file")
    cached = library_cache_file(backbone)
    if cached is not None and cached.exists():
        return _checked(backbone, cached, f"{backbone.library}-cache")
    if backbone.packaged is not None:
        return _checked(backbone, backbone.packaged(), "packaged")
    url = download_url(backbone)
    if url is None:
        return None, WeightsInfo("random", note=f"{backbone.name} has no pretrained weights source; "
                                                "training from random initialisation.")
    if not network_available(url):
        return None, WeightsInfo("random", note=offline_message(backbone, cached.parent if cached else None))
    return _checked(backbone, download(backbone), "download")


_MEMO: dict[tuple, tuple[dict[str, torch.Tensor], str]] = {}  # at most one weights file per process


def _checked(backbone: Backbone, path: Path, source: str) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """Read, check and hash a weights file once per process while it stays the same: a search or a
    cross-validation builds a model per fit, and reading 13 MB again each time cost a trial a third of its time.
    The state is only ever loaded from (load_state_dict copies it), never changed, so one copy serves all."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    stat = path.stat()
    key = (backbone.name, str(path), stat.st_mtime_ns, stat.st_size, source)
    if key not in _MEMO:
        state = read_state_file(path)
        state = map_in_order(backbone, state) if source == "packaged" else match_state(backbone, state)
        _MEMO.clear()
        _MEMO[key] = state, sha256_file(path)
    state, digest = _MEMO[key]
    return state, WeightsInfo(source, str(path), digest)


def library_cache_file(backbone: Backbone) -> Path | None:
    """Where the backbone's own library keeps its download: the torch hub cache, or timm's Hugging Face cache."""
    if backbone.tv_weights is not None:
        return torchvision_cache_file(backbone)
    if backbone.hf_repo is not None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(backbone.hf_repo, HF_FILE)
        return Path(found) if isinstance(found, str) else None
    return None


def download_url(backbone: Backbone) -> str | None:
    if backbone.tv_weights is not None:
        return backbone.tv_weights.url
    if backbone.hf_repo is not None:
        return f"https://huggingface.co/{backbone.hf_repo}"
    return None


def map_in_order(backbone: Backbone, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A packaged file names its tensors its own way; they must line up one to one, in order, same shapes."""
    own = backbone.build().state_dict()
    theirs = list(state.items())
    problems = []
    if len(theirs) != len(own):
        problems.append(f"the file has {len(theirs)} tensors, the model {len(own)}")
    problems += [f"{k} {list(v.shape)} vs {m} {list(own[m].shape)}"
                 for (k, v), m in zip(theirs, own) if v.shape != own[m].shape]
    if problems:
        raise WeightsError(f"The packaged weights do not line up with {backbone.name}: {_few(problems)}. "
                           "Was the weights package replaced by another version?")
    return {m: v for m, (_, v) in zip(own, theirs)}


def availability(backbone: Backbone, online: bool) -> str:
    """What "pretrained" would find on this machine now: cached, packaged, downloadable or missing."""
    cached = library_cache_file(backbone)
    if cached is not None and cached.exists():
        return "cached"
    if backbone.packaged is not None:
        return "packaged"
    if download_url(backbone) is not None and online:
        return "downloadable"
    return "missing"


def offline_message(backbone: Backbone, where: Path | None) -> str:
    return (f"Pretrained weights for {backbone.name} are not on this machine (looked in {where or 'the cache'}) and the "
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
        raise WeightsError(f"{backbone.name}'s weights come from its package or timm's hub cache; "
                           "use the file with --weights FILE instead")
    state = match_state(backbone, read_state_file(path))
    own = backbone.build().state_dict()
    if any(k not in state or state[k].shape != own[k].shape for k in own):
        raise WeightsError("Only a complete checkpoint, ImageNet head included, can be installed as the "
                           "pretrained weights; use it with --weights FILE instead.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with runs.replace_atomically(target) as tmp:
        torch.save(state, tmp)
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


def download(backbone: Backbone) -> Path:
    """The library's own download into its own cache, with a progress bar."""
    if backbone.hf_repo is not None:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(backbone.hf_repo, HF_FILE))
    target = torchvision_cache_file(backbone)
    download_file(backbone.tv_weights.url, target)
    return target


def download_file(url: str, target: Path) -> None:
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
    except pickle.UnpicklingError:  # torch's tensors-only unpickler met an object it will not build
        raise WeightsError(f"{path.name} contains Python code, not only tensors, so it was refused: weights files are "
                           "data. Save a state dict with torch.save(model.state_dict(), ...) or use .safetensors."
                           ) from None
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
