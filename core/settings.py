"""Settings read from the environment (FTLAB_*), each with its default and the reason for it."""
from __future__ import annotations

import os


def cpus() -> int:
    """The cores this app may use on this machine: FTLAB_CPUS, else the cores the process may run on (a taskset or
    container limit shows there, where os.cpu_count() sees the whole machine). Every default that divides the cores
    (threads per run, decoding pools) starts here, so a shared server, or a test suite running processes side by
    side, can hand the app a share of the machine."""
    if value := os.environ.get("FTLAB_CPUS", "").strip():
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"FTLAB_CPUS={value!r} is not a whole number of cores") from None
    return max(1, len(os.sched_getaffinity(0)))
