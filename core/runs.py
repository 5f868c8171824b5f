"""The run folder on disk, written as training goes so a crash or restart loses nothing.

RUN_DIR/config.json           the full RunConfig (+ "provenance": what was resolved: weights, data, device)
RUN_DIR/classes.json          class names in output order
RUN_DIR/preprocessing.json    input size, resize mode, mean and std: what a deployment must repeat
RUN_DIR/metrics.jsonl         one JSON object per finished epoch
RUN_DIR/confusion_matrix.json validation, best epoch, rows = true class
RUN_DIR/model.safetensors     best weights
RUN_DIR/status.json           running | finished | stopped | failed, with a message
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def write_json(path: Path, obj: Any) -> None:
    """Atomic: readers (the page, another process) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(_finite(row)) + "\n")
        f.flush()


def rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(_finite(r)) + "\n" for r in rows))
    os.replace(tmp, path)


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


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def write_status(run_dir: Path, status: str, message: str = "", **extra: Any) -> None:
    write_json(run_dir / "status.json", {"status": status, "message": message, "time": time.time(), **extra})


def _finite(obj: Any) -> Any:
    """JSON has no NaN: write null, which every reader understands."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run folder under root, newest first, from what is on disk (so a server restart loses nothing)."""
    rows = []
    for run_dir in sorted((p for p in Path(root).glob("*") if (p / "config.json").is_file()), reverse=True):
        config = read_json(run_dir / "config.json", {})
        status = read_json(run_dir / "status.json", {})
        history = read_jsonl(run_dir / "metrics.jsonl")
        best = status.get("best_epoch") or 0
        best_row = history[best - 1] if 0 < best <= len(history) else {}
        rows.append({
            "id": run_dir.name, "run_dir": run_dir, "status": status.get("status", "unknown"),
            "message": status.get("message", ""), "backbone": config.get("model", {}).get("backbone"),
            "strategy": config.get("model", {}).get("strategy"),
            "weights": config.get("provenance", {}).get("weights", {}).get("source"),
            "epochs": len(history), "best_epoch": best, "val_acc": best_row.get("val_acc"),
            "val_macro_f1": best_row.get("val_macro_f1"), "seconds": sum(r.get("seconds") or 0 for r in history),
            "dataset": config.get("provenance", {}).get("dataset", {}).get("key"),
            "time": (run_dir / "config.json").stat().st_mtime,
        })
    return rows
