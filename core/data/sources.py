"""Sources -> an app-owned workspace copy, keyed by content hash.

Every way data arrives (a folder, a zip as a path, bytes or an open file, the (path, file) pairs of a browser
folder upload) becomes one list of entries, is checked against size limits, and is copied under
`workspace/datasets/<key>/data/`, a chunk at a time: an upload is never copied whole in memory.
User-supplied names are data: each is reduced to safe components; one that tries to leave the folder
(`../`, absolute, drive letters) is refused and reported, never written.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import unicodedata
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, ContextManager, Iterator, Sequence

from core import runs
from core.data import eviction

LITTER_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "__macosx", "@eadir", "$recycle.bin", "icon\r"}
SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}
_CHUNK = 1 << 20
MAX_DEPTH, MAX_NAME_BYTES = 32, 255  # folders deep, and one name's length (most filesystems' limit)

Upload = Sequence[tuple[str, bytes | BinaryIO]]  # (relative path, content or a seekable file object)
DataSource = str | Path | bytes | BinaryIO | Upload  # a file object is a zip


class DataError(ValueError):
    """Data that cannot be used at all; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 8 * 1024**3  # uncompressed, whole dataset
    max_files: int = 200_000
    max_file_bytes: int = 256 * 1024**2
    # A zip member that unpacks past this size to more than max_ratio times its packed size is a bomb: image files
    # hardly compress (JPEG, PNG are compressed already; raw TIFFs a few times), a bomb by a thousand times or more.
    ratio_floor_bytes: int = 16 * 1024**2
    max_ratio: int = 200


@dataclass
class Refused:
    path: str
    reason: str


@dataclass
class Ingested:
    key: str
    root: Path  # workspace/datasets/<key>; the files are under root / "data"
    files: dict[str, str]  # relative path -> sha256
    empty_dirs: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    reused: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"


@dataclass
class _Entry:
    parts: tuple[str, ...]
    open: Callable[[], ContextManager[BinaryIO]]  # read from the start; read twice (hash, then copy)
    packed: int = 0  # a zip member's compressed size (0: not compressed)


def ingest(source: DataSource, workspace: Path, limits: Limits = Limits()) -> Ingested:
    """Copy a source into the workspace once; the same content again costs no disk."""
    if isinstance(source, (str, Path)) and not Path(source).exists():
        copy = Path(source).resolve()  # a run names its dataset by the copy's data folder: datasets/KEY/data
        if copy.name == "data" and copy.parent.parent == (workspace / "datasets").resolve():
            return stored(workspace, copy.parent.name)  # copied back when it was evicted, else says why not
    entries, dirs, refused = _entries(source, limits)
    entries = _screen(entries, refused)
    entries, dirs = _strip_enclosing_folder(entries, dirs)
    if not entries:
        raise DataError(
            "The upload contains no files. Choose a folder with one subfolder per class (or a zip of one)."
        )
    hashes = {}
    total = 0
    for entry in entries:
        digest, size = _hash(entry, limits, total)
        total += size
        hashes["/".join(entry.parts)] = digest
    key = _dataset_key(hashes, dirs)
    root = workspace / "datasets" / key
    manifest = root / "ingest.json"
    if manifest.exists():
        _write_refused(root, refused)
        eviction.used(root)
        return _read_manifest(root, refused, reused=True)
    eviction.make_room(workspace / "datasets", total, keep=key)
    staging = workspace / "datasets" / f".staging-{uuid.uuid4().hex}"
    try:
        for entry in entries:
            target = staging.joinpath("data", *entry.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with _reading(entry) as src, open(target, "wb") as dst:
                _copy_bounded(src, dst, limits.max_file_bytes)
        (staging / "data").mkdir(parents=True, exist_ok=True)
        info = Ingested(key, root, hashes, sorted("/".join(d) for d in dirs), refused)
        origin = {"origin": str(Path(source).expanduser().resolve())} if isinstance(source, (str, Path)) else {}
        (staging / "ingest.json").write_text(json.dumps(_manifest_dict(info) | origin, ensure_ascii=False, indent=1))
        try:
            staging.rename(root)
        except OSError:  # a concurrent ingest of the same content won
            if not manifest.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_refused(root, refused)
    return _read_manifest(root, refused, reused=False)


def stored(workspace: Path, key: str) -> Ingested:
    """A dataset ingested earlier, by its key (what a page keeps in the URL)."""
    if not key.isalnum():
        raise DataError("That dataset link is not valid. Load the data again.")
    root = workspace / "datasets" / key
    if not (root / "ingest.json").is_file():
        _restore(workspace, key)
    eviction.used(root)
    try:
        refused = [Refused(**r) for r in json.loads((root / "refused.json").read_text())]
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        refused = []
    return _read_manifest(root, refused, reused=True)


def _restore(workspace: Path, key: str) -> None:
    """Copy back a dataset evicted to free disk, from where it came from, if that is still the same data."""
    stone = eviction.tombstone(workspace / "datasets", key)
    origin = runs.read_json(stone, {}).get("origin")
    if not origin:
        raise DataError("That dataset is no longer in the workspace. Load the data again.")
    try:
        again = ingest(origin, workspace).key
    except DataError as exc:
        raise DataError(f"This dataset's copy was removed to free disk, and copying it again from {origin} failed "
                        f"({exc}). Load the data again.") from None
    if again != key:
        raise DataError(f"This dataset's copy was removed to free disk, and {origin} has changed since. Load the "
                        "data again (a new dataset) or put the old files back.")
    stone.unlink(missing_ok=True)


def server_folder(root: Path, relative: str) -> Path:
    """A folder under the configured server root, never outside it (no ../, no absolute, no link out)."""
    parts = safe_parts(relative)
    if parts is None:
        raise DataError(f"'{relative}' points outside the server data folder. Pick a folder inside {root}.")
    root = root.resolve()
    folder = root.joinpath(*parts).resolve()
    if not folder.is_relative_to(root):
        raise DataError(f"'{relative}' leads outside the server data folder through a link. Pick another folder.")
    if not folder.is_dir():
        raise DataError(f"There is no folder '{relative}' under {root}.")
    return folder


def safe_parts(name: str) -> tuple[str, ...] | None:
    """A user-supplied relative path as safe components, or None when it tries to escape."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/"))
    if "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        return None
    return parts


def is_litter(parts: tuple[str, ...]) -> bool:
    """Hidden files and OS litter are ignored silently."""
    return any(p.startswith(".") or p.startswith("._") or p.lower() in LITTER_NAMES for p in parts)


def _entries(source: DataSource, limits: Limits) -> tuple[list[_Entry], set[tuple[str, ...]], list[Refused]]:
    if isinstance(source, (bytes, bytearray)):
        return _zip_entries(io.BytesIO(source), limits)
    if hasattr(source, "read"):  # an uploaded zip, read in place
        return _zip_entries(source, limits)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            return _folder_entries(path, limits)
        if path.is_file() and zipfile.is_zipfile(path):
            return _zip_entries(path, limits)
        if path.is_file():
            raise DataError(f"{path.name} is neither a folder nor a zip file. Give a folder of class subfolders or a zip.")
        raise DataError(f"{source} does not exist. Check the path.")
    return _upload_entries(source, limits)


def _upload_entries(pairs: Upload, limits: Limits):
    if len(pairs) > limits.max_files:
        raise DataError(f"The upload has {len(pairs)} files; the limit is {limits.max_files}. Upload a smaller dataset.")
    entries, refused = [], []
    for name, data in pairs:
        parts = safe_parts(name)
        if parts is None:
            refused.append(Refused(name, "its path points outside the upload (../ or absolute), so it was ignored"))
        elif parts and not is_litter(parts):
            entries.append(_Entry(parts, lambda data=data: _from_start(data)))
    return entries, set(), refused


def _from_start(data: bytes | BinaryIO) -> ContextManager[BinaryIO]:
    """The content from its first byte; a caller's file object is rewound, and left open for its owner."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(data)
    data.seek(0)
    return contextlib.nullcontext(data)


def _folder_entries(root: Path, limits: Limits):
    root = root.resolve()
    entries, dirs, refused = [], set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        real_rel = Path(dirpath).relative_to(root).parts
        rel = tuple(unicodedata.normalize("NFC", p) for p in real_rel)  # macOS names are NFD
        dirnames[:] = sorted(d for d in dirnames if not is_litter(rel + (d,)))
        filenames = sorted(f for f in filenames if not is_litter(rel + (f,)))
        if not filenames and not dirnames and rel:
            dirs.add(rel)
        for name in filenames:
            parts = rel + (unicodedata.normalize("NFC", name),)
            path = Path(dirpath, name)
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                refused.append(Refused("/".join(parts), "a link to a file outside the folder, so it was ignored"))
                continue
            entries.append(_Entry(parts, lambda real=real: open(real, "rb")))
            if len(entries) > limits.max_files:
                raise DataError(f"The folder has more than {limits.max_files} files. Point at a smaller dataset.")
    return entries, dirs, refused


def _zip_entries(file: Path | BinaryIO, limits: Limits):
    declared = _declared_entries(file)
    if declared is not None and declared > limits.max_files:  # before a central directory that size is parsed
        raise DataError(f"The zip holds {declared} files; the limit is {limits.max_files}. Split the dataset.")
    try:
        archive = zipfile.ZipFile(file)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"The zip file is damaged and cannot be opened ({exc}). Create it again.") from None
    files = [i for i in infos if not i.is_dir()]
    if len(files) > limits.max_files:
        raise DataError(f"The zip holds {len(files)} files; the limit is {limits.max_files}. Split the dataset.")
    declared = sum(i.file_size for i in files)
    if declared > limits.max_total_bytes:
        raise DataError(
            f"The zip would unpack to {_gb(declared)}, over the {_gb(limits.max_total_bytes)} limit. "
            "Use a smaller dataset (or a folder on the server)."
        )
    entries, dirs, refused = [], set(), []
    for info in infos:
        parts = safe_parts(info.filename)
        if parts is None:
            refused.append(Refused(info.filename, "its path points outside the zip (../ or absolute), so it was ignored"))
            continue
        if not parts or is_litter(parts):
            continue
        if info.is_dir():
            dirs.add(parts)
        elif info.flag_bits & 0x1:
            refused.append(Refused(info.filename, "it is encrypted; zip the data without a password"))
        elif (info.external_attr >> 16) & 0o170000 == 0o120000:
            refused.append(Refused(info.filename, "it is a symbolic link, not a file, so it was ignored"))
        else:
            entries.append(_Entry(parts, lambda info=info: archive.open(info), info.compress_size))
    file_dirs = {e.parts[:i] for e in entries for i in range(1, len(e.parts))}
    return entries, dirs - file_dirs, refused


def _declared_entries(file: Path | BinaryIO) -> int | None:
    """The entry count a zip's end record declares, read without parsing its central directory (a zip of millions
    of empty entries would take gigabytes of memory to list)."""
    with open(file, "rb") if isinstance(file, Path) else contextlib.nullcontext(file) as f:
        try:
            end = zipfile._EndRecData(f)  # the standard library's own reader of the end record (zip64 included)
        except OSError:
            return None
        finally:
            f.seek(0)
    return None if end is None else end[zipfile._ECD_ENTRIES_TOTAL]


def _screen(entries: list[_Entry], refused: list[Refused]) -> list[_Entry]:
    """Refuse, with a reason each, names the disk cannot hold as given: a path twice, a file and a folder of the
    same name, names too long or too deep."""
    seen: set[tuple[str, ...]] = set()
    folders = {e.parts[:i] for e in entries for i in range(1, len(e.parts))}
    kept = []
    for e in entries:
        name = "/".join(e.parts)
        if e.parts in seen:
            refused.append(Refused(name, "the same path appears twice; the first was kept"))
        elif e.parts in folders:
            refused.append(Refused(name, "a file and a folder have this name; the folder was kept"))
        elif len(e.parts) > MAX_DEPTH or any(len(p.encode()) > MAX_NAME_BYTES for p in e.parts):
            refused.append(Refused(name[:200], f"its path is deeper than {MAX_DEPTH} folders or a name is longer "
                                               f"than {MAX_NAME_BYTES} bytes, more than a disk holds"))
        else:
            seen.add(e.parts)
            kept.append(e)
    return kept


def _strip_enclosing_folder(entries: list[_Entry], dirs: set[tuple[str, ...]]):
    """`photos/cat/1.jpg` -> `cat/1.jpg`: drop a single top folder while class folders remain below it."""
    while entries:
        tops = {e.parts[0] for e in entries}
        if len(tops) != 1:
            break
        (top,) = tops
        if top.lower() in SPLIT_NAMES or not any(len(e.parts) > 2 for e in entries):
            break
        entries = [_Entry(e.parts[1:], e.open, e.packed) for e in entries]
        dirs = {d[1:] for d in dirs if len(d) > 1 and d[0] == top}
    return entries, dirs


def _hash(entry: _Entry, limits: Limits, total_so_far: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with _reading(entry) as stream:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > limits.max_file_bytes:
                raise DataError(
                    f"{'/'.join(entry.parts)} is larger than the {_gb(limits.max_file_bytes)} per-file limit. "
                    "Remove it or downscale it."
                )
            if entry.packed and size > limits.ratio_floor_bytes and size > limits.max_ratio * entry.packed:
                raise DataError(
                    f"{'/'.join(entry.parts)} unpacks to more than {limits.max_ratio} times its packed size: a zip "
                    "bomb, not image data. Nothing was written; zip the real images again."
                )
            if total_so_far + size > limits.max_total_bytes:
                raise DataError(
                    f"The data unpacks to more than the {_gb(limits.max_total_bytes)} limit. Use a smaller dataset."
                )
            digest.update(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def _reading(entry: _Entry) -> Iterator[BinaryIO]:
    """A damaged zip member fails while it is read: say which one, as data, not as a crash."""
    try:
        with entry.open() as stream:
            yield stream
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{'/'.join(entry.parts)} could not be read ({exc}); the archive or file is damaged. "
                        "Create it again.") from None


def _copy_bounded(src: BinaryIO, dst: BinaryIO, max_bytes: int) -> None:
    written = 0
    while chunk := src.read(_CHUNK):
        written += len(chunk)
        if written > max_bytes:  # the hashing pass checked; a source that grew since is refused too
            raise DataError("A file changed while it was being copied. Try again.")
        dst.write(chunk)


def _dataset_key(hashes: dict[str, str], dirs: set[tuple[str, ...]]) -> str:
    h = hashlib.sha256()
    for path in sorted(hashes):
        h.update(f"{path}\0{hashes[path]}\n".encode())
    for d in sorted(dirs):
        h.update(("dir\0" + "/".join(d) + "\n").encode())
    return h.hexdigest()[:20]


def _manifest_dict(info: Ingested) -> dict:
    return {"key": info.key, "files": info.files, "empty_dirs": info.empty_dirs}


def _write_refused(root: Path, refused: list[Refused]) -> None:
    """The latest upload's refused entries: not part of the key, but what its person needs to see again."""
    runs.write_json(root / "refused.json", [vars(r) for r in refused])


def _read_manifest(root: Path, refused: list[Refused], reused: bool) -> Ingested:
    """The stored copy, with this upload's own refused entries (they are not part of the key)."""
    data = json.loads((root / "ingest.json").read_text())
    return Ingested(data["key"], root, data["files"], data["empty_dirs"], refused, reused)


def _gb(n: int) -> str:
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            return f"{round(n / size, 1):g} {unit}"
    return f"{n} bytes"
