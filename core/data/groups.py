"""Which patient or specimen each image belongs to, so no group straddles train, val and test.

Three sources, at most one set in DataConfig: a CSV of path,group rows; a regular expression with a named group
`group`, searched in each image's path; or a folder level below the class folder. An image no source names is
its own group (its path is the group id): it cannot leak, and the report says how many there are.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from core.config import DataConfig
from core.data.sources import SPLIT_NAMES, DataError

MAX_CSV_BYTES = 50 * 1024**2
_SHOWN = 5


def assign_groups(
    paths: list[str], data: DataConfig, layout: str, data_dir: Path | None = None
) -> tuple[list[str] | None, str, list[str]]:
    """(a group id per path or None when no source is set, the source in words, warnings).

    `paths` are relative to the dataset copy (Sample.path); `layout` is "folders" or "pre-split". A relative CSV
    path that does not exist as given is looked for inside the dataset copy at `data_dir`."""
    chosen = [name for name, value in (("groups", data.groups), ("group_pattern", data.group_pattern),
                                       ("group_level", data.group_level)) if value]
    if len(chosen) > 1:
        raise DataError(f"Patient/specimen groups can come from one source only, but {' and '.join(chosen)} are "
                        "both set. Keep one: a groups CSV, a group pattern or a group folder level.")
    warnings: list[str] = []
    if data.group_pattern:
        found, source = _by_pattern(paths, data.group_pattern), f"pattern {data.group_pattern}"
    elif data.group_level:
        found, source = _by_level(paths, data.group_level, layout), f"folder level {data.group_level}"
    elif data.groups:
        file = _csv_file(data.groups, data_dir)
        found, source = _by_csv(paths, file, layout, warnings), f"csv {file.name}"
    else:
        return None, "", []
    missing = [p for p, g in zip(paths, found) if not g]
    if missing:
        warnings.append(f"{len(missing)} of {len(paths)} images got no group from the {source} (for example "
                        f"'{missing[0]}'); each of them is treated as a group of its own.")
    return [g or p for p, g in zip(paths, found)], source, warnings


def _by_pattern(paths: list[str], pattern: str) -> list[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"The group pattern {pattern!r} is not a valid regular expression ({exc}). "
                        r"For example (?P<group>P\d+)_ finds P017 in tumour/P017_slice3.png.") from None
    if "group" not in regex.groupindex:
        raise DataError(f"The group pattern {pattern!r} has no part named 'group' to take the id from. Mark it "
                        r"with (?P<group>...), for example (?P<group>P\d+)_ finds P017 in tumour/P017_slice3.png.")
    found = []
    for path in paths:
        match = regex.search(path)
        found.append((match.group("group") or "") if match else "")
    return found


def _by_level(paths: list[str], level: int, layout: str) -> list[str]:
    if level < 0:
        raise DataError(f"The group folder level must be 1 or more (1 = the folder right below the class folder), "
                        f"not {level}.")
    skip = 1 if layout == "pre-split" else 0
    found = []
    for path in paths:
        folders = path.split("/")[skip:-1]  # class folder first, the file name dropped
        found.append(folders[level] if level < len(folders) else "")
    return found


def _csv_file(name: str, data_dir: Path | None) -> Path:
    file = Path(name).expanduser()
    if not file.is_file() and data_dir is not None and not file.is_absolute():
        inside = (data_dir / file).resolve()
        if inside.is_relative_to(data_dir.resolve()) and inside.is_file():
            file = inside
    if not file.is_file():
        raise DataError(f"The groups file {name} does not exist. Give the path of a CSV with columns path,group.")
    if file.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"The groups file {file.name} is larger than {MAX_CSV_BYTES // 1024**2} MB; a path,group "
                        "list is far smaller. Check that it is the right file.")
    return file


def _by_csv(paths: list[str], file: Path, layout: str, warnings: list[str]) -> list[str]:
    """Rows match an image's path as given, or after dropping a leading split folder or one enclosing folder."""
    rows = _read_rows(file)
    index: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        for key in {path, _without_split(path) if layout == "pre-split" else path}:
            index.setdefault(key, []).append(i)
    found = [""] * len(paths)
    unmatched, conflicts = [], 0
    for line, path, group in rows:
        hits = next((index[k] for k in _variants(path) if k in index), None)
        if hits is None:
            unmatched.append(f"line {line}: {path}")
            continue
        for i in hits:
            conflicts += bool(found[i]) and found[i] != group
            found[i] = found[i] or group
    if unmatched:
        warnings.append(f"{len(unmatched)} rows of {file.name} match no image of the dataset and were ignored: "
                        + "; ".join(unmatched[:_SHOWN]) + ("; ..." if len(unmatched) > _SHOWN else ""))
    if conflicts:
        warnings.append(f"{conflicts} images are listed more than once in {file.name} with different groups; the "
                        "first row for each was used.")
    return found


def _read_rows(file: Path) -> list[tuple[int, str, str]]:
    """(line number, path, group) rows; parsed as data with the csv module, never evaluated."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"The groups file {file.name} is not UTF-8 text. Save it as a UTF-8 CSV.") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header or "group" not in header:
        raise DataError(f"The groups file {file.name} needs a header row with the columns path,group; its first "
                        f"row is {','.join(header) or '(empty)'}.")
    at_path, at_group = header.index("path"), header.index("group")
    rows = []
    for row in reader:
        if len(row) > max(at_path, at_group) and row[at_path].strip():
            path = re.sub(r"^(\./|/)+", "", row[at_path].strip().replace("\\", "/"))
            rows.append((reader.line_num, path, row[at_group].strip()))
    return rows


def _without_split(path: str) -> str:
    top, _, rest = path.partition("/")
    return rest if rest and top.lower() in SPLIT_NAMES else path


def _variants(path: str) -> list[str]:
    """The path as written, then without one enclosing (or split) folder, then without a split folder below that."""
    parts = path.split("/")
    drops = [0, 1] + ([2] if len(parts) > 1 and parts[1].lower() in SPLIT_NAMES else [])
    return ["/".join(parts[n:]) for n in drops if len(parts) - n >= 2]
