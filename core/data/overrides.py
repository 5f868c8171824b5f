"""Label review corrections, stored beside the dataset copy: the originals are never touched.

`<dataset root>/label_overrides.json` holds which images got another class and which were excluded, with a
version that goes up on every change, so a run can record which labels it trained on. The image content key of
the dataset stays the same (feature caches keyed by it stay valid); validate() applies the overrides.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.data.sources import DataError, stored
from core.runs import write_json

FILE = "label_overrides.json"


@dataclass(frozen=True)
class Overrides:
    version: int = 0  # 0: never reviewed
    relabelled: dict[str, str] = field(default_factory=dict)  # path (as Sample.path) -> class name
    excluded: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """Short content hash: two runs with the same digest trained on the same labels."""
        if not self.version:
            return ""
        body = json.dumps([sorted(self.relabelled.items()), sorted(self.excluded)], ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()[:12]


def read(root: Path) -> Overrides:
    """The overrides of the dataset at `root` (Ingested.root); none when the file is absent."""
    file = Path(root) / FILE
    if not file.exists():
        return Overrides()
    try:
        data = json.loads(file.read_text())
        relabelled, excluded = data["relabelled"], data["excluded"]
        if not (isinstance(data["version"], int) and isinstance(relabelled, dict) and isinstance(excluded, list)
                and all(isinstance(x, str) for x in [*relabelled, *relabelled.values(), *excluded])):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{file} is damaged, so the label review of this dataset cannot be applied. Delete it to "
                        "start the review again from the original labels.") from None
    return Overrides(data["version"], dict(relabelled), tuple(excluded))


def relabel(root: Path, path: str, new_class: str) -> Overrides:
    """Give one image another class (one of the dataset's classes; validate() ignores any other, with a warning)."""
    if not isinstance(new_class, str) or not new_class.strip() or "/" in new_class:
        raise DataError(f"{new_class!r} is not a class name; pick one of the dataset's classes.")
    current = read(root)
    _check_path(root, path)
    return _write(root, current, {**current.relabelled, path: new_class},
                  tuple(p for p in current.excluded if p != path))


def exclude(root: Path, path: str) -> Overrides:
    """Leave one image out of training and evaluation (a wrong or unusable image)."""
    current = read(root)
    _check_path(root, path)
    relabelled = {p: c for p, c in current.relabelled.items() if p != path}
    return _write(root, current, relabelled, tuple(sorted({*current.excluded, path})))


def restore(root: Path, path: str) -> Overrides:
    """Undo the review of one image: its original label and inclusion again."""
    current = read(root)
    if path not in current.relabelled and path not in current.excluded:
        return current
    relabelled = {p: c for p, c in current.relabelled.items() if p != path}
    return _write(root, current, relabelled, tuple(p for p in current.excluded if p != path))


def _check_path(root: Path, path: str) -> None:
    """Only a file of the dataset's manifest: a path is a key to look up, never opened."""
    root = Path(root)
    if not isinstance(path, str) or path not in stored(root.parent.parent, root.name).files:
        raise DataError(f"{path!r} is not an image of this dataset; label review can only change its own images.")


def _write(root: Path, current: Overrides, relabelled: dict[str, str], excluded: tuple[str, ...]) -> Overrides:
    new = Overrides(current.version + 1, dict(sorted(relabelled.items())), excluded)
    write_json(Path(root) / FILE, {"version": new.version, "relabelled": new.relabelled, "excluded": list(excluded)})
    return new
