"""Inference engines: one eval-mode network, run the fastest correct way this machine offers.

Feature extraction (the frozen fast path, the leakage check, cross-validation folds) and Predict only run a
network forward, and eager PyTorch is the slowest way to do that on a CPU. Measured here (2 cores,
efficientnet_lite0, hymenoptera; bench/speed.py): with onnxruntime, feature extraction runs at 3.3x and Predict at
4x the images/s of eager PyTorch, decoding included. "auto" picks onnxruntime on a CPU and channels_last on CUDA
(eager PyTorch for a few small images, where an export would cost more than it saves); an engine that cannot
export the network, or whose outputs on the first batch differ from eager PyTorch by more than TOLERANCE, gives
way to the next one, and the runner says why (`note`). Eager PyTorch, the reference, is always taken.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from core.config import ENGINES

TOLERANCE = 1e-4  # of the largest output magnitude: float32 kernels that sum in another order, nothing more
ONNX_OPSET = 17
SMALL_WORK = 32  # images at 224 px: exporting efficientnet_lite0 (0.5 s) pays for itself after about 15 of them


@dataclass
class Runner:
    """A frozen network's forward pass: (N, 3, S, S) float32 on the device -> float32 outputs on the CPU."""
    engine: str  # the one that runs: onnxruntime | channels_last | eager
    forward: Callable[[torch.Tensor], torch.Tensor]
    note: str = ""  # why the engine asked for is not the one that runs

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images)

    def __str__(self) -> str:
        return f"{self.engine} ({self.note})" if self.note else self.engine


def resolve(name: str, device: torch.device, work: float = math.inf) -> str:
    """The engine "auto" means here: onnxruntime on a CPU when it is installed, channels_last otherwise; eager for
    `work` (images to run, counted at 224 x 224 px) too small to pay for an export."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {name!r}")
    if name != "auto":
        return name
    if work < SMALL_WORK:
        return "eager"
    if device.type == "cpu" and _has_onnxruntime():
        return "onnxruntime"
    return "channels_last"


def runner(module: nn.Module, name: str, device: torch.device, example: torch.Tensor, images: float = math.inf
           ) -> Runner:
    """The engine `name` for module (left as it was) on `device`, checked against eager PyTorch on `example` (a
    few real inputs); falls back onnxruntime -> channels_last -> eager when one fails or disagrees. `images`: how
    many it will run, when known (see resolve)."""
    module = module.eval()
    home = next(module.parameters()).device
    with torch.no_grad():
        reference = module(example.to(home)).float().cpu()
    wanted = resolve(name, device, images * (example.shape[-1] * example.shape[-2]) / 224 ** 2)
    notes = []
    for engine in ENGINES[ENGINES.index(wanted):]:
        try:
            forward = BUILDERS[engine](module, device, example)
            with torch.no_grad():
                diff = float((forward(example) - reference).abs().max())
        except Exception as exc:  # an exporter or runtime that cannot take this network: say so, use the next
            if engine == "eager":
                raise
            notes.append(f"{engine} could not run this network ({str(exc).splitlines()[0][:200]})")
            continue
        if engine == "eager" or diff <= TOLERANCE * max(1.0, float(reference.abs().max())):
            return Runner(engine, forward, "; ".join(notes))
        notes.append(f"{engine} differed from PyTorch by {diff:.2g}")
    raise AssertionError("unreachable: eager PyTorch is always taken")


def _eager(module: nn.Module, device: torch.device, example: torch.Tensor) -> Callable:
    module = module if next(module.parameters()).device == device else copy.deepcopy(module).to(device)

    @torch.no_grad()
    def forward(images: torch.Tensor) -> torch.Tensor:
        return module(images.to(device)).float().cpu()
    return forward


def _channels_last(module: nn.Module, device: torch.device, example: torch.Tensor) -> Callable:
    """A copy in channels_last memory order: oneDNN's and cuDNN's convolutions run it without reordering."""
    fast = copy.deepcopy(module).to(device, memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(images: torch.Tensor) -> torch.Tensor:
        return fast(images.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
    return forward


def _onnxruntime(module: nn.Module, device: torch.device, example: torch.Tensor) -> Callable:
    """The network run by onnxruntime with as many threads as torch has."""
    import onnxruntime as ort

    if device.type != "cpu":
        raise ValueError("the onnxruntime engine here runs on the CPU")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(_onnx(module, example[:2].to(next(module.parameters()).device)), options,
                                   providers=["CPUExecutionProvider"])

    def forward(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": images.float().contiguous().numpy()})[0])
    return forward


def _onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """With the TorchScript-based exporter: under a second for efficientnet_lite0, where the torch.export one takes
    several. Traced with autograd on: under no_grad, attention takes a fused kernel that has no ONNX form."""
    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(module, (example,), buf, dynamo=False, input_names=["images"], output_names=["outputs"],
                          dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}}, opset_version=ONNX_OPSET)
    return buf.getvalue()


BUILDERS = {"onnxruntime": _onnxruntime, "channels_last": _channels_last, "eager": _eager}


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
