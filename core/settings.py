"""Settings read from the environment, each with its default and the reason for it. So far FTLAB_CPUS; the other
FTLAB_* variables are still read where they are used (issue 24 gathers them here)."""
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
