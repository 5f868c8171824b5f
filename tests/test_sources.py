"""Ingesting folders, zips and browser uploads into the workspace: copied once, keyed by content, never escaping."""
from __future__ import annotations

import io
import json
import os
import time
import unicodedata
import zipfile
from pathlib import Path

import pytest

from conftest import image_bytes, make_dataset
from core.data.sources import DataError, Limits, ingest, is_litter, safe_parts

pytestmark = pytest.mark.unit

PNG_A = image_bytes((220, 40, 40), seed=1)
PNG_B = image_bytes((40, 60, 220), seed=2)


def zip_bytes(entries: dict[str, bytes], dirs: tuple[str, ...] = (), compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for d in dirs:
            archive.writestr(zipfile.ZipInfo(d if d.endswith("/") else d + "/"), b"")
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)  # kept verbatim: writestr(str) would not keep "/abs.png" as is
            info.compress_type = compression
            archive.writestr(info, data)
    return buf.getvalue()


def folder_as_entries(root: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dataset_dirs(workspace: Path) -> list[Path]:
    return sorted(p for p in (workspace / "datasets").iterdir() if p.is_dir())


def files_under(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


# --- folder sources ----------------------------------------------------------------------------------------------

def test_folder_is_copied_into_workspace_with_class_folders(workspace, two_class_folder):
    result = ingest(two_class_folder, workspace)
    assert result.root == workspace / "datasets" / result.key
    assert result.data_dir == result.root / "data"
    assert sorted(p.name for p in result.data_dir.iterdir()) == ["cat", "dog"]
    assert files_under(result.data_dir) == {f"{c}/{i}.png" for c in ("cat", "dog") for i in range(12)}
    assert set(result.files) == files_under(result.data_dir)
    for rel in result.files:  # a copy with the same bytes
        assert (result.data_dir / rel).read_bytes() == (two_class_folder / rel).read_bytes()
    assert result.reused is False and result.refused == []
    assert all(len(h) == 64 for h in result.files.values())


def test_copy_is_independent_of_the_source(workspace, two_class_folder):
    result = ingest(two_class_folder, workspace)
    (two_class_folder / "cat" / "0.png").unlink()
    assert (result.data_dir / "cat" / "0.png").is_file()


def test_same_content_twice_is_reused_without_second_copy(workspace, two_class_folder, tmp_path):
    first = ingest(two_class_folder, workspace)
    second = ingest(str(two_class_folder), workspace)
    assert second.key == first.key and second.root == first.root
    assert first.reused is False and second.reused is True
    assert second.files == first.files
    assert dataset_dirs(workspace) == [first.root]  # no second copy, no staging left over

    moved = tmp_path / "elsewhere" / "renamed"  # same content under another path: still the same dataset
    moved.parent.mkdir()
    two_class_folder.rename(moved)
    third = ingest(moved, workspace)
    assert third.key == first.key and third.reused
    assert dataset_dirs(workspace) == [first.root]


def test_different_content_gets_a_different_key(workspace, two_class_folder):
    first = ingest(two_class_folder, workspace)
    (two_class_folder / "cat" / "0.png").write_bytes(PNG_B)
    second = ingest(two_class_folder, workspace)
    assert second.key != first.key and not second.reused
    assert len(dataset_dirs(workspace)) == 2


def test_renaming_a_class_changes_the_key(workspace, two_class_folder):
    first = ingest(two_class_folder, workspace)
    (two_class_folder / "dog").rename(two_class_folder / "puppy")
    assert ingest(two_class_folder, workspace).key != first.key


def test_empty_subfolder_is_recorded(workspace, two_class_folder):
    (two_class_folder / "bird").mkdir()
    result = ingest(two_class_folder, workspace)
    assert result.empty_dirs == ["bird"]
    assert set(result.files) == {f"{c}/{i}.png" for c in ("cat", "dog") for i in range(12)}


# --- zips and uploads: the same dataset, the same key --------------------------------------------------------------

def test_zip_with_and_without_enclosing_folder_has_folder_key(workspace, two_class_folder):
    folder = ingest(two_class_folder, workspace)
    flat = ingest(zip_bytes(folder_as_entries(two_class_folder)), workspace)
    enclosed = ingest(zip_bytes(folder_as_entries(two_class_folder, "data/"),
                                dirs=("data/", "data/cat/", "data/dog/")), workspace)
    assert flat.key == folder.key and enclosed.key == folder.key
    assert flat.reused and enclosed.reused
    assert set(enclosed.files) == set(folder.files)
    assert dataset_dirs(workspace) == [folder.root]


def test_zip_file_on_disk_is_ingested(workspace, two_class_folder, tmp_path):
    path = tmp_path / "upload.zip"
    path.write_bytes(zip_bytes(folder_as_entries(two_class_folder, "my photos/")))
    result = ingest(path, workspace)
    assert result.key == ingest(two_class_folder, workspace).key
    assert sorted(p.name for p in result.data_dir.iterdir()) == ["cat", "dog"]


def test_browser_upload_strips_enclosing_folder(workspace, two_class_folder):
    pairs = [(f"photos/{rel}", data) for rel, data in folder_as_entries(two_class_folder).items()]
    result = ingest(pairs, workspace)
    assert "photos" not in {p.name for p in result.data_dir.iterdir()}
    assert set(result.files) == {f"{c}/{i}.png" for c in ("cat", "dog") for i in range(12)}
    assert result.key == ingest(two_class_folder, workspace).key


class Uploaded(io.BytesIO):
    """What Streamlit hands a page (a BytesIO with a name); copying it out whole is what the app must not do with
    a large upload, so that fails here."""

    def __init__(self, data: bytes, name: str = "upload"):
        super().__init__(data)
        self.name = name

    def getvalue(self):
        raise AssertionError("the upload was copied whole with getvalue()")


class Streamed(Uploaded):
    """An uploaded image file: read a bounded chunk at a time, never whole."""

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and 0 <= size <= 1 << 20, f"read({size}): the upload was read whole"
        return super().read(size)


def test_uploaded_file_objects_are_ingested_in_chunks(workspace, two_class_folder):
    uploads = [Streamed(data, f"photos/{rel}") for rel, data in folder_as_entries(two_class_folder).items()]
    uploads.append(Streamed(PNG_A, "../evil.png"))
    result = ingest([(u.name, u) for u in uploads], workspace)
    assert result.key == ingest(two_class_folder, workspace).key
    for rel in result.files:
        assert (result.data_dir / rel).read_bytes() == (two_class_folder / rel).read_bytes()
    assert [r.path for r in result.refused] == ["../evil.png"]
    assert not any(u.closed for u in uploads)  # the page still owns them


def test_uploaded_file_object_over_the_per_file_limit_is_refused(workspace):
    big = Streamed(b"x" * 3000, "cat/big.png")
    with pytest.raises(DataError, match="per-file limit"):
        ingest([("cat/big.png", big), ("dog/1.png", Streamed(PNG_B))], workspace, Limits(max_file_bytes=2000))
    assert not (workspace / "datasets").exists() or dataset_dirs(workspace) == []


def test_uploaded_zip_file_object_is_ingested(workspace, two_class_folder):
    upload = Uploaded(zip_bytes(folder_as_entries(two_class_folder, "my photos/")), "set.zip")
    result = ingest(upload, workspace)
    assert result.key == ingest(two_class_folder, workspace).key and not upload.closed
    bomb = Uploaded(zip_bytes({"cat/1.png": PNG_A, "dog/1.png": b"\0" * 5000}), "bomb.zip")
    with pytest.raises(DataError, match="unpack to"):
        ingest(bomb, workspace, Limits(max_total_bytes=4000))


def test_upload_with_two_enclosing_folders_strips_both(workspace):
    result = ingest([("a/b/cat/1.png", PNG_A), ("a/b/dog/1.png", PNG_B)], workspace)
    assert set(result.files) == {"cat/1.png", "dog/1.png"}


def test_flat_class_folders_are_not_stripped(workspace):
    """One class folder with files directly in it: that folder is the class, not an enclosing folder."""
    result = ingest([("cat/1.png", PNG_A), ("cat/2.png", PNG_B)], workspace)
    assert set(result.files) == {"cat/1.png", "cat/2.png"}


def test_pre_split_folder_keeps_its_split_folder(workspace, tmp_path):
    make_dataset(tmp_path / "ds" / "train", {"cat": 2, "dog": 2})
    result = ingest(tmp_path / "ds", workspace)
    assert {p.split("/")[0] for p in result.files} == {"train"}
    make_dataset(tmp_path / "ds" / "val", {"cat": 1, "dog": 1})
    result = ingest(tmp_path / "ds", workspace)
    assert {p.split("/")[0] for p in result.files} == {"train", "val"}


def test_zip_strips_only_the_name_above_the_split_folder(workspace):
    entries = {"hymenoptera/train/ants/x.png": PNG_A, "hymenoptera/train/bees/y.png": PNG_B,
               "hymenoptera/val/ants/z.png": image_bytes(seed=9)}
    result = ingest(zip_bytes(entries), workspace)
    assert set(result.files) == {"train/ants/x.png", "train/bees/y.png", "val/ants/z.png"}
    only_train = ingest(zip_bytes({"hymenoptera/train/ants/x.png": PNG_A,
                                   "hymenoptera/train/bees/y.png": PNG_B}), workspace)
    assert set(only_train.files) == {"train/ants/x.png", "train/bees/y.png"}


# --- names that try to escape ------------------------------------------------------------------------------------

ESCAPING = ["../evil.png", "/abs.png", "C:/x.png", "a/../../b.png", "..\\win.png", "c:\\evil2.png"]


def test_zip_entries_escaping_are_refused_and_not_written(workspace, tmp_path):
    entries = {name: PNG_A for name in ESCAPING} | {"cat/1.png": PNG_A, "dog/1.png": PNG_B}
    result = ingest(zip_bytes(entries), workspace)
    refused = {r.path: r.reason for r in result.refused}
    assert set(refused) == set(ESCAPING)
    assert all("outside" in reason for reason in refused.values())
    assert set(result.files) == {"cat/1.png", "dog/1.png"}
    assert files_under(tmp_path) == {f"workspace/datasets/{result.key}/{p}" for p in
                                     ("data/cat/1.png", "data/dog/1.png", "ingest.json", "refused.json")}
    assert not any(tmp_path.parent.glob("*.png")) and not Path("/abs.png").exists()


def test_upload_pairs_escaping_are_refused_and_not_written(workspace, tmp_path):
    pairs = [(name, PNG_A) for name in ESCAPING] + [("cat/1.png", PNG_A), ("dog/1.png", PNG_B), ("x\x00.png", PNG_A)]
    result = ingest(pairs, workspace)
    assert {r.path for r in result.refused} == set(ESCAPING) | {"x\x00.png"}
    assert set(result.files) == {"cat/1.png", "dog/1.png"}
    assert files_under(tmp_path) == {f"workspace/datasets/{result.key}/{p}" for p in
                                     ("data/cat/1.png", "data/dog/1.png", "ingest.json", "refused.json")}


def test_refused_entries_do_not_change_the_key(workspace):
    clean = ingest(zip_bytes({"cat/1.png": PNG_A, "dog/1.png": PNG_B}), workspace)
    dirty = ingest(zip_bytes({"cat/1.png": PNG_A, "dog/1.png": PNG_B, "../evil.png": PNG_A}), workspace)
    assert dirty.key == clean.key and dirty.reused
    assert [r.path for r in dirty.refused] == ["../evil.png"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_to_file_outside_folder_is_refused(workspace, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG_B)
    root = make_dataset(tmp_path / "data", {"cat": 2, "dog": 2})
    (root / "cat" / "link.png").symlink_to(secret)
    result = ingest(root, workspace)
    assert [r.path for r in result.refused] == ["cat/link.png"]
    assert "outside" in result.refused[0].reason
    assert "cat/link.png" not in result.files
    assert not (result.data_dir / "cat" / "link.png").exists()


# --- limits ------------------------------------------------------------------------------------------------------

def test_zip_bomb_is_refused_before_extraction(workspace):
    bomb = zip_bytes({"cat/zeros.png": b"\0" * (8 * 1024**2), "dog/1.png": PNG_B})
    assert len(bomb) < 100_000
    with pytest.raises(DataError, match="5 MB") as err:
        ingest(bomb, workspace, Limits(max_total_bytes=5 * 1024**2))
    assert "limit" in str(err.value) and "8 MB" in str(err.value)
    assert not (workspace / "datasets").exists() or not any((workspace / "datasets").iterdir())


def test_zip_under_the_total_limit_is_accepted(workspace):
    result = ingest(zip_bytes({"cat/1.png": PNG_A, "dog/1.png": PNG_B}), workspace, Limits(max_total_bytes=1024**2))
    assert set(result.files) == {"cat/1.png", "dog/1.png"}


def test_folder_over_total_limit_is_refused(workspace, two_class_folder):
    total = sum(p.stat().st_size for p in two_class_folder.rglob("*.png"))
    with pytest.raises(DataError, match="limit"):
        ingest(two_class_folder, workspace, Limits(max_total_bytes=total - 1))
    assert ingest(two_class_folder, workspace, Limits(max_total_bytes=total)).files


def test_zip_with_too_many_files_is_refused(workspace):
    entries = {f"cat/{i}.png": PNG_A for i in range(6)}
    with pytest.raises(DataError, match="5"):
        ingest(zip_bytes(entries), workspace, Limits(max_files=5))
    assert len(ingest(zip_bytes(entries), workspace, Limits(max_files=6)).files) == 6


def test_upload_and_folder_with_too_many_files_are_refused(workspace, two_class_folder):
    with pytest.raises(DataError, match="limit is 3"):
        ingest([(f"cat/{i}.png", PNG_A) for i in range(4)], workspace, Limits(max_files=3))
    with pytest.raises(DataError, match="more than 10 files"):
        ingest(two_class_folder, workspace, Limits(max_files=10))


def test_entry_over_per_file_limit_is_refused(workspace):
    entries = {"cat/big.png": b"\1" * 3000, "dog/1.png": b"\2" * 100}
    with pytest.raises(DataError, match="per-file limit") as err:
        ingest(zip_bytes(entries), workspace, Limits(max_file_bytes=2000))
    assert "cat/big.png" in str(err.value)
    with pytest.raises(DataError, match="per-file limit"):
        ingest(list(entries.items()), workspace, Limits(max_file_bytes=2000))


# --- nothing usable ----------------------------------------------------------------------------------------------

def _assert_tells_what_to_do(err: pytest.ExceptionInfo) -> None:
    message = str(err.value)
    assert "no files" in message and "subfolder per class" in message


def test_empty_upload_list(workspace):
    with pytest.raises(DataError) as err:
        ingest([], workspace)
    _assert_tells_what_to_do(err)


def test_empty_zip(workspace):
    with pytest.raises(DataError) as err:
        ingest(zip_bytes({}), workspace)
    _assert_tells_what_to_do(err)


def test_empty_folder(workspace, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        ingest(tmp_path / "empty", workspace)
    _assert_tells_what_to_do(err)


def test_folder_with_only_litter(workspace, tmp_path):
    root = tmp_path / "litter"
    (root / "__MACOSX").mkdir(parents=True)
    (root / "__MACOSX" / "._1.png").write_bytes(PNG_A)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Thumbs.db").write_bytes(b"thumbs")
    with pytest.raises(DataError) as err:
        ingest(root, workspace)
    _assert_tells_what_to_do(err)


def test_litter_is_silently_ignored(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 2, "dog": 2})
    (root / ".DS_Store").write_bytes(b"x")
    (root / "cat" / "Thumbs.db").write_bytes(b"x")
    (root / "cat" / ".hidden").write_bytes(b"x")
    (root / "dog" / "desktop.ini").write_bytes(b"x")
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._0.png").write_bytes(b"x")
    folder = ingest(root, workspace)
    assert set(folder.files) == {"cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"}
    assert folder.refused == [] and folder.empty_dirs == []

    entries = folder_as_entries(root, "data/")
    assert "data/__MACOSX/cat/._0.png" in entries
    zipped = ingest(zip_bytes(entries), workspace)
    assert zipped.key == folder.key and set(zipped.files) == set(folder.files) and zipped.refused == []
    uploaded = ingest(list(entries.items()), workspace)
    assert uploaded.key == folder.key and uploaded.refused == []


# --- what is not a dataset at all ----------------------------------------------------------------------------

def test_damaged_zip_bytes(workspace):
    good = zip_bytes({"cat/1.png": PNG_A, "dog/1.png": PNG_B})
    for damaged in (good[: len(good) // 2], b"PK\x03\x04 not really a zip", b""):
        with pytest.raises(DataError, match="damaged"):
            ingest(damaged, workspace)


def test_zip_with_corrupted_entry_data_is_a_data_error(workspace):
    """Damage inside a member (central directory intact) must still be a DataError, not a zipfile crash."""
    raw = bytearray(zip_bytes({"cat/1.png": image_bytes(size=(64, 64)), "dog/1.png": PNG_B}))
    for i in range(100, 300):
        raw[i] ^= 0xFF
    with pytest.raises(DataError):
        ingest(bytes(raw), workspace)


def test_path_that_does_not_exist(workspace, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ingest(tmp_path / "nope", workspace)
    with pytest.raises(DataError, match="does not exist"):
        ingest(str(tmp_path / "nope"), workspace)


def test_regular_file_that_is_not_a_zip(workspace, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match="neither a folder nor a zip"):
        ingest(path, workspace)


def test_data_error_is_a_value_error(workspace):
    with pytest.raises(ValueError):
        ingest([], workspace)


# --- names -------------------------------------------------------------------------------------------------------

def test_spaces_and_non_ascii_names_are_preserved(workspace):
    nfd = unicodedata.normalize("NFD", "chat noir/été 1.png")
    assert nfd != "chat noir/été 1.png"
    pairs = [(nfd, PNG_A), ("犬/1.png", PNG_B)]
    for source in (pairs, zip_bytes(dict(pairs))):
        result = ingest(source, workspace)
        assert set(result.files) == {"chat noir/été 1.png", "犬/1.png"}  # NFC
        assert sorted(p.name for p in result.data_dir.iterdir()) == ["chat noir", "犬"]
        assert (result.data_dir / "chat noir" / "été 1.png").read_bytes() == PNG_A


def test_folder_names_are_normalised_like_uploads(workspace, tmp_path):
    """A folder copied from a Mac keeps decomposed (NFD) names; it must be the same dataset as its zip."""
    root = tmp_path / "data"
    for cls, data in (("été", PNG_A), ("hiver", PNG_B)):
        folder = root / unicodedata.normalize("NFD", cls)
        folder.mkdir(parents=True)
        (folder / "1.png").write_bytes(data)
    folder_result = ingest(root, workspace)
    names = sorted(folder_result.files)
    assert all(n == unicodedata.normalize("NFC", n) for n in names), f"not NFC: {[ascii(n) for n in names]}"
    assert set(names) == {"été/1.png", "hiver/1.png"}  # NFC, like zips and uploads
    zipped = ingest(zip_bytes({"été/1.png": PNG_A, "hiver/1.png": PNG_B}), workspace)
    assert zipped.key == folder_result.key


def test_manifest_is_written_and_readable(workspace, two_class_folder):
    import json

    result = ingest(two_class_folder, workspace)
    manifest = json.loads((result.root / "ingest.json").read_text())
    assert manifest["key"] == result.key and manifest["files"] == result.files


# --- unit cases --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, parts", [
    ("cat/1.png", ("cat", "1.png")),
    ("./cat//1.png", ("cat", "1.png")),
    ("cat\\sub\\1.png", ("cat", "sub", "1.png")),
    ("chat noir/été.png", ("chat noir", "été.png")),
    (unicodedata.normalize("NFD", "été/1.png"), ("été", "1.png")),
    ("a..b/c..png", ("a..b", "c..png")),
    ("", ()),
    (".", ()),
])
def test_safe_parts_keeps_safe_names(name, parts):
    assert safe_parts(name) == parts


@pytest.mark.parametrize("name", [
    "../evil.png", "a/../../b.png", "a/..", "/abs.png", "\\abs.png", "C:/x.png", "c:x.png", "D:\\x.png",
    "..\\x.png", "cat/\x00.png",
])
def test_safe_parts_refuses_escaping_names(name):
    assert safe_parts(name) is None


@pytest.mark.parametrize("parts, litter", [
    ((".DS_Store",), True), (("cat", "Thumbs.db"), True), (("__MACOSX", "cat", "1.png"), True),
    (("cat", "._1.png"), True), (("cat", ".hidden"), True), (("cat", "1.png"), False),
    (("chat noir", "été.png"), False),
])
def test_is_litter(parts, litter):
    assert is_litter(parts) is litter


def test_server_folder_stays_under_its_root(tmp_path):
    from core.data.sources import server_folder
    root = tmp_path / "srv"
    (root / "proj" / "imgs").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "out").symlink_to(tmp_path / "secret")
    assert server_folder(root, "proj/imgs") == (root / "proj" / "imgs").resolve()
    for bad, why in (("../secret", "outside"), ("/etc", "outside"), ("out", "link"), ("nope", "no folder")):
        with pytest.raises(DataError, match=why):
            server_folder(root, bad)


def test_a_stored_dataset_reopens_by_key(two_class_folder, workspace):
    from core.data.sources import stored
    first = ingest(two_class_folder, workspace)
    again = stored(workspace, first.key)
    assert again.key == first.key and again.files == first.files
    for bad in ("../../etc", "0" * 20):
        with pytest.raises(DataError):
            stored(workspace, bad)


def test_a_full_disk_evicts_server_copies_least_recently_used_and_they_come_back(tmp_path, monkeypatch):
    """Copies of server folders are evicted oldest-used first when the disk would keep under its reserve; an
    upload (no other copy) stays; opening an evicted dataset, or training on its copy's path, copies it back."""
    import shutil

    from core.data import eviction
    from core.data.sources import stored

    import numpy as np
    from PIL import Image

    ws = tmp_path / "ws"
    old = tmp_path / "server" / "old"  # about 5 MB of noise: evicting it alone makes the room asked for below
    for i in range(6):
        (old / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(i).integers(0, 256, (512, 512, 3), dtype=np.uint8)
        Image.fromarray(noise).save(old / "ab"[i % 2] / f"{i}.png")
    recent = make_dataset(tmp_path / "server" / "recent", {"a": 4, "b": 4})
    upload = [(f"u/{c}/{i}.png", image_bytes((10 * i, 0, 0) if c == "a" else (0, 0, 10 * i), seed=i))
              for c in "ab" for i in range(3)]
    keys = {name: ingest(src, ws).key for name, src in (("old", old), ("upload", upload), ("recent", recent))}
    os.utime(ws / "datasets" / keys["recent"] / "ingest.json", (time.time() + 10, time.time() + 10))
    new = make_dataset(tmp_path / "server" / "new", {"a": 2, "b": 2})
    free_mb = shutil.disk_usage(ws).free / 1024**2
    monkeypatch.setenv("FTLAB_DISK_RESERVE_MB", str(free_mb + 1))  # 1 MB and the new copy short: one eviction
    fresh = ingest(new, ws)
    left = {p.name for p in (ws / "datasets").iterdir() if not p.name.startswith(".")}
    assert keys["old"] not in left and {keys["upload"], keys["recent"], fresh.key} <= left
    monkeypatch.setenv("FTLAB_DISK_RESERVE_MB", "0")
    assert stored(ws, keys["old"]).files.keys() == ingest(old, ws).files.keys()  # copied back from the server
    shutil.rmtree(ws / "datasets" / keys["old"])  # evicted again, this time ...
    eviction.tombstone(ws / "datasets", keys["old"]).write_text(json.dumps({"origin": str(old)}))
    assert ingest(ws / "datasets" / keys["old"] / "data", ws).key == keys["old"]  # ... a run's path brings it back
    shutil.rmtree(ws / "datasets" / keys["old"])
    eviction.tombstone(ws / "datasets", keys["old"]).write_text(json.dumps({"origin": str(old)}))
    (old / "a" / "0.png").unlink()
    with pytest.raises(DataError, match="removed to free disk, and .* has changed since"):
        stored(ws, keys["old"])
