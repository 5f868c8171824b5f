"""Processes on Linux (/proc): a live one told from a dead one whose pid was reused (the kernel's start time), a
process's descendants (torchrun's workers run in sessions of their own), dying with one's parent, and whether this
process is one of a torchrun group's."""
from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1


def in_torchrun_group() -> bool:
    """True inside a torchrun worker of a group of more than one process (torchrun's environment says so; no torch
    needed, so the CLI decides to become torchrun before importing it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ


def torchrun_rank() -> int:
    """This process's rank as torchrun gave it (0 outside a group), known before the group is joined."""
    return int(os.environ.get("RANK", "0")) if in_torchrun_group() else 0


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces): state, parent, ..., start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process, None when there is no such process (or only its zombie)."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def descendants(pid: int) -> list[int]:
    """Children, their children and so on, as they are now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := parent_of(int(entry.name))) is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """A process and all its descendants (found first: once the parent dies they are re-parented)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux prctl)."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), sig)
