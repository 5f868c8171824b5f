"""The run folder on disk, written as training goes so a crash or restart loses nothing.

RUN_DIR/config.json           the full RunConfig (+ "provenance": what was resolved: weights, data, device)
RUN_DIR/classes.json          class names in output order
RUN_DIR/preprocessing.json    input size, resize mode, mean and std: what a deployment must repeat
RUN_DIR/metrics.jsonl         one JSON object per finished epoch
RUN_DIR/confusion_matrix.json validation, best epoch, rows = true class
RUN_DIR/model.safetensors     best weights
RUN_DIR/status.json           running | finished | stopped | failed, with a message
RUN_DIR/predictions.jsonl     held-out images with their probabilities, and results.json: see evaluate/heldout.py
RUN_DIR/exports/              TorchScript and ONNX, built and checked on request (export.py)

A cross-validation folder holds one run folder per fold beside CV_FILE and OOF_FILE (experiments/crossval.py);
what reads a cross-validation (label review, ensembles, predict) knows it by CV_FILE.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch

CV_FILE = "cv.json"
SEARCH_FILE = "search.json"
OOF_FILE = "oof_predictions.jsonl"

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import: os.umask only reads by writing


@contextmanager
def replace_atomically(path: Path) -> Iterator[Path]:
    """A temporary path to write in full, then moved onto `path` in one step: readers never see half a file, and
    two writers of the same file at the same moment (sessions, threads) each have their own temporary file, so
    neither clobbers the other's. On an error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; the result is a normal file
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomic: readers (the page, another process) never see half a file."""
    with replace_atomically(path) as tmp:
        tmp.write_text(json.dumps(finite(obj), indent=2, ensure_ascii=False))


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(finite(row)) + "\n")
        f.flush()


def rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with replace_atomically(path) as tmp:
        tmp.write_text("".join(json.dumps(finite(r)) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            break
    return rows


def disk_bytes(path: Path) -> int:
    """Bytes a folder takes on disk (links not followed): what a quota counts and what deleting it frees."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:  # removed while walking
                pass
    return total


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file  # here, not at the top: what only reads run folders needs no torch

    with replace_atomically(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


def write_status(run_dir: Path, status: str, message: str = "", **extra: Any) -> None:
    write_json(run_dir / "status.json", {"status": status, "message": message, "time": time.time(), **extra})


def finite(obj: Any) -> Any:
    """JSON has no NaN: write null, which every reader understands."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


SUMMARY_FILES = ("config.json", "status.json", "metrics.jsonl")  # all a list_runs row is made of
_CACHED_ROOTS = 8
_CACHED_RUNS = 10_000  # per root; runs beyond are read on every call
# A file changed twice within one tick of the file system's clock (up to 2 s on some) can keep its stamp: a row
# whose files are younger than this is read again next time rather than trusted.
_RACY_NS = 2_000_000_000
_cache: dict[str, dict[str, tuple[tuple, dict[str, Any]]]] = {}  # root -> run folder name -> (stamp, row)
_cache_lock = threading.Lock()


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run folder under root, newest first, from what is on disk (so a server restart loses nothing).

    A run's row is read again only when a file it comes from changed (SUMMARY_FILES: modification time, size and
    inode), so a rerun with a thousand runs costs a few thousand stat calls rather than six thousand JSON reads;
    a new, deleted, resumed or still-training run shows as it is on disk on the next call. Each row is the
    caller's own copy: a page may change it."""
    key = os.path.abspath(root)
    with _cache_lock:
        known = _cache.get(key, {})
    try:
        names = sorted((e.name for e in os.scandir(key) if not e.name.startswith(".") and e.is_dir()), reverse=True)
    except OSError:  # no runs folder yet, or not one this process may read: no runs, as glob has it
        names = []
    settled = time.time_ns() - _RACY_NS
    fresh: dict[str, tuple[tuple, dict[str, Any]]] = {}
    rows = []
    for name in names:
        run_dir = os.path.join(key, name)
        stamp = _stamp(run_dir)
        if stamp[0] is None:
            continue
        entry = known.get(name)
        if entry is None or entry[0] != stamp:
            try:
                entry = stamp, _summary(load_run(Path(run_dir)), stamp)
            except FileNotFoundError:  # deleted while listed
                continue
        if len(fresh) < _CACHED_RUNS and all(s is None or s[0] < settled for s in stamp):
            fresh[name] = entry
        rows.append(dict(entry[1]))
    with _cache_lock:
        _cache.pop(key, None)
        _cache[key] = fresh
        while len(_cache) > _CACHED_ROOTS:
            del _cache[next(iter(_cache))]
    return rows


def _stamp(run_dir: str) -> tuple:
    """(mtime_ns, size, inode) of each of SUMMARY_FILES, None where it is missing: an append changes the size and
    the mtime, an atomic replace (write_json) the inode."""
    stamp = []
    for name in SUMMARY_FILES:
        try:
            st = os.stat(os.path.join(run_dir, name))
        except (FileNotFoundError, NotADirectoryError):
            stamp.append(None)
            continue
        stamp.append((st.st_mtime_ns, st.st_size, st.st_ino) if stat.S_ISREG(st.st_mode) else None)
    return tuple(stamp)


def _summary(run: RunRecord, stamp: tuple) -> dict[str, Any]:
    model = run.config.get("model", {})
    return {
        "id": run.id, "run_dir": run.run_dir, "status": run.status.get("status", "unknown"),
        "message": run.status.get("message", ""), "backbone": model.get("backbone"),
        "strategy": model.get("strategy"), "weights": run.weights_source, "epochs": len(run.history),
        "best_epoch": run.best_epoch, "val_acc": run.best.get("val_acc"),
        "val_macro_f1": run.best.get("val_macro_f1"), "seconds": run.seconds,
        "dataset": run.config.get("provenance", {}).get("dataset", {}).get("key"),
        "time": stamp[0][0] / 1e9,
    }


@dataclass
class RunRecord:
    """One run as its folder has it: what the Results page and the exports read, during training or after."""
    run_dir: Path
    config: dict[str, Any]
    classes: list[str]
    preprocessing: dict[str, Any]
    history: list[dict[str, Any]]
    status: dict[str, Any]
    confusion: dict[str, Any] | None

    @property
    def id(self) -> str:
        return self.run_dir.name

    @property
    def best_epoch(self) -> int:
        return self.status.get("best_epoch") or 0

    @property
    def best(self) -> dict[str, Any]:
        """The metrics row of the epoch whose weights were kept ({} before the first epoch ends)."""
        return self.history[self.best_epoch - 1] if 0 < self.best_epoch <= len(self.history) else {}

    @property
    def seconds(self) -> float:
        return sum(r.get("seconds") or 0 for r in self.history)

    @property
    def weights_source(self) -> str | None:
        return self.config.get("provenance", {}).get("weights", {}).get("source")


def find_run(root: Path, run_id: str) -> Path | None:
    """The run folder named by an id from a URL, or None: an id is a plain name, never a path."""
    if not run_id or not all(c.isalnum() or c in "-_" for c in run_id):
        return None
    path = Path(root) / run_id
    return path if (path / "config.json").is_file() else None


def load_run(run_dir: Path) -> RunRecord:
    """Raises FileNotFoundError when the folder is not a run (no config.json)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: it has no config.json.")
    return RunRecord(run_dir, read_json(run_dir / "config.json", {}), read_json(run_dir / "classes.json", []),
                     read_json(run_dir / "preprocessing.json", {}), read_jsonl(run_dir / "metrics.jsonl"),
                     read_json(run_dir / "status.json", {}), read_json(run_dir / "confusion_matrix.json"))


def delete_run(root: Path, run_id: str) -> None:
    """Remove a run folder; only a plain id under root (find_run), never a path from elsewhere."""
    run_dir = find_run(root, run_id)
    if run_dir is None:
        raise FileNotFoundError(f"There is no run {run_id!r}.")
    shutil.rmtree(run_dir)
