"""Telling a live process from a dead one whose pid was reused: the kernel's start time (Linux /proc)."""
from __future__ import annotations

from pathlib import Path


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process, None when there is no such process (or only its zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]
