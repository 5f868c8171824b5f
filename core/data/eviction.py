"""Room on a full disk: dataset copies that can be made again are deleted, least recently used first.

A copy can be made again when it came from a path on the server (a server folder, a zip or folder given to the
CLI): ingest.json records that origin, and a tombstone (datasets/.evicted/KEY.json) keeps it once the copy is
gone, so opening the dataset again copies it back (sources.stored). Uploads have no other copy: they stay until
their person deletes them (and count against their disk quota on a shared server).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from core import runs

EVICTED = ".evicted"


def disk_reserve() -> int:
    """Free bytes every cache and copy leaves on the disk (FTLAB_DISK_RESERVE_MB, default 1 GB)."""
    return int(float(os.environ.get("FTLAB_DISK_RESERVE_MB", "1024")) * 1024**2)


def used(root: Path) -> None:
    """Mark a dataset copy as just used (its manifest's mtime is the LRU clock)."""
    try:
        os.utime(root / "ingest.json")
    except OSError:
        pass


def tombstone(datasets: Path, key: str) -> Path:
    return datasets / EVICTED / f"{key}.json"


def make_room(datasets: Path, needed: int, keep: str = "") -> list[str]:
    """Evict re-creatable copies, least recently used first, until `needed` more bytes leave the reserve free.
    Returns the keys evicted."""
    if not datasets.is_dir():
        return []
    short = needed + disk_reserve() - shutil.disk_usage(datasets).free
    candidates = []
    for manifest in datasets.glob("*/ingest.json"):
        origin = json.loads(manifest.read_text()).get("origin")
        if origin and manifest.parent.name != keep:
            candidates.append((manifest.stat().st_mtime, manifest.parent, origin))
    evicted = []
    for _, root, origin in sorted(candidates):
        if short <= 0:
            break
        size = runs.disk_bytes(root)
        stone = tombstone(datasets, root.name)
        stone.parent.mkdir(exist_ok=True)
        stone.write_text(json.dumps({"origin": origin}))
        shutil.rmtree(root, ignore_errors=True)
        short -= size
        evicted.append(root.name)
    return evicted
