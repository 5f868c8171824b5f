"""How a loop through the backbone runs on the hardware: autocast precision, memory layout, loader workers.

Measured on 2 CPU cores (efficientnet_lite0, full fine-tuning, batches of 16; bench/speed.py): channels_last
trains about 1.6x as fast as the contiguous layout with the same float32 arithmetic, so it is on by default.
bfloat16 autocast, on a CPU with native bfloat16 (avx512_bf16), ran at 0.92x to 1.08x of that: nothing to risk
accuracy for, so "auto" keeps float32 on a CPU. torch.compile spent 72 s compiling to then train slower (17 against
23 images/s), so it is not offered. On CUDA, "auto" is bfloat16 where the GPU has it, else float16 with a gradient scaler (float16's narrow
range flushes small gradients to 0 without one).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from core import settings

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16, resolved
    device_type: str
    scaler: torch.amp.GradScaler | None = None  # float16 only

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = DTYPES[self.name]
        return torch.autocast(self.device_type, dtype=dtype) if dtype else contextlib.nullcontext()


def resolve(name: str, device: torch.device) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {name!r}")
    if name == "auto":
        name = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
    return Precision(name, device.type, torch.amp.GradScaler(device.type) if name == "fp16" else None)


def loader_workers(asked: int, device: torch.device) -> int:
    """DataLoader worker processes: as asked, or (-1) sized to the cores when a GPU waits on decoding; on a CPU,
    decoding is a few percent of a training step and workers would take cores from the arithmetic."""
    if asked >= 0:
        return asked
    return min(8, max(1, settings.cpus() - 1)) if device.type == "cuda" else 0


def layout(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last and images.dim() == 4 else images
