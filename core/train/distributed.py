"""One run on several processes: torchrun's environment, the process group, and the few collectives the loop needs.

Outside torchrun (or with one process) every function here is the single-process identity, so `fit` reads the
same either way. Decisions that end the loop (a stop, a loss that is not finite) are agreed by all processes at
the same point of the loop: a process that stopped alone would leave the others waiting in their next collective.
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from pathlib import Path
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from core.processes import in_torchrun_group, torchrun_rank

TIMEOUT = timedelta(minutes=30)  # the longest one process may wait for the others (rank 0 evaluating, say)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once; gloo on CPUs, NCCL on GPUs) and return this process's device: its own
    GPU (LOCAL_RANK) on a machine with several."""
    if not in_torchrun_group():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
        atexit.register(_leave)
    return device


def _leave() -> None:
    """Leave the group before the interpreter ends: a process exiting with the group's threads still running can
    abort ("terminate called without an active exception", SIGABRT), which torchrun takes for a failure."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return torchrun_rank()


def is_main() -> bool:
    """Rank 0: the one process that writes the run folder and reports."""
    return rank() == 0


def local_processes() -> int:
    """Processes of this run on this machine: they share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if in_torchrun_group() else 1


def local_main() -> bool:
    """The first process on its machine: writes what each machine keeps for itself (the feature cache)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def restarts_left() -> int:
    """How many more times torchrun will restart the group if this attempt fails."""
    return max(0, int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
               - int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))


def resumes(run_dir: Path) -> bool:
    """A process torchrun restarted continues the run from its last checkpoint, when one was written."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and (Path(run_dir) / "checkpoint.pt").is_file()


def _device() -> torch.device:
    """Where collectives of this group take their tensors (NCCL wants them on the GPU)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_(flag: bool) -> bool:
    """True on every process when it is true on any."""
    if world() == 1:
        return flag
    t = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return bool(t.item())


def sum_(*values: float) -> list[float]:
    """Each value summed over the processes (float64, so counts and loss sums stay exact)."""
    if world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor (a confusion matrix) summed over the processes."""
    if world() == 1:
        return t
    out = t.to(_device())
    dist.all_reduce(out)
    return out.to(t.device)


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def broadcast(tensors: Iterable[torch.Tensor]) -> None:
    """Rank 0's values of these tensors (a module's parameters or buffers) on every process."""
    if world() == 1:
        return
    with torch.no_grad():
        for t in tensors:
            moved = t.data.to(_device())
            dist.broadcast(moved, 0)
            t.data.copy_(moved)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the module's trainable parameters as they are now: DDP only reduces the
    gradients of what required grad when it was built, so a change of the trainable groups needs a new wrap."""
    if world() == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def shard_indices(n: int) -> list[int]:
    """This process's share of n items: every world-th from its rank, padded at the end with repeats of the first
    items so every process gets as many (the same number of batches, so collectives line up)."""
    w, r = world(), rank()
    per = -(-n // w)
    return [(i if i < n else i % max(n, 1)) for i in range(r, per * w, w)]


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of shard_indices: every process's rows, in the original order, without the padding."""
    if world() == 1:
        return local
    parts = [torch.empty_like(local, device=_device()) for _ in range(world())]
    dist.all_gather(parts, local.to(_device()).contiguous())
    stacked = torch.stack([p.to(local.device) for p in parts], 1)  # [per, world, ...]: row i*world + r is (i, r)
    return stacked.reshape(-1, *local.shape[1:])[:n]


def shard_loader(loader: DataLoader) -> DataLoader:
    """An evaluation loader over this process's share of the images, without padding (DistributedSampler's padded
    duplicates would be counted twice): the counts summed over processes are those of the whole split."""
    if world() == 1:
        return loader
    share = Subset(loader.dataset, range(rank(), len(loader.dataset), world()))
    return DataLoader(share, batch_size=loader.batch_size, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory)
