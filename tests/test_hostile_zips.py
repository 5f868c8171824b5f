"""A corpus of hostile zips, generated here (issue 16): every one is refused or stripped of what it tried, with a
reason, before 2 GB is written, and the process that ingests it grows by less than 200 MB (a fresh process each)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

from conftest import PEAK_MB, RESTART_PEAK, ROOT, image_bytes

pytestmark = pytest.mark.integration

INGEST = PEAK_MB + """
from core.data.sources import DataError, ingest
""" + RESTART_PEAK + """
try:
    result = ingest(Path(sys.argv[1]), Path(sys.argv[2]))
    out = {"error": None, "files": sorted(result.files), "refused": [[r.path, r.reason] for r in result.refused]}
except DataError as exc:
    out = {"error": str(exc)}
out["growth_mb"] = peak_mb() - before
print(json.dumps(out))
"""
MAX_GROWTH_MB = 200
GOOD = {f"{c}/{i}.png": image_bytes((200 * (c == "cat"), 90, 40), seed=i) for c in ("cat", "dog") for i in range(3)}


def ingest_apart(zip_path: Path, workspace: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", INGEST, str(zip_path), str(workspace)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # refused as data, never a crash
    out = json.loads(done.stdout.splitlines()[-1])
    out["written_mb"] = sum(f.stat().st_size for f in workspace.rglob("*") if f.is_file()) / 1024**2
    return out


def write_zip(path: Path, members: dict | list, symlinks: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: the point of one case
        for name, data in members.items() if isinstance(members, dict) else members:
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symbolic link, as `zip --symlinks` stores it
            z.writestr(info, target)
    return path


def zeros_zip(path: Path, members: int, member_mb: int) -> Path:
    """members x member_mb of zeros: a few MB on disk, gigabytes unpacked."""
    chunk = bytes(1024**2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data in GOOD.items():
            z.writestr(name, data)
        for m in range(members):
            with z.open(f"cat/blank{m}.tif", "w", force_zip64=True) as f:
                for _ in range(member_mb):
                    f.write(chunk)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cat/deep.png", bytes(50 * 1024**2))
    return {
        "escaping names": write_zip(root / "escape.zip", GOOD | {
            "../evil.png": b"x", "../../outside/evil.png": b"x", "/abs/evil.png": b"x", "C:/evil.png": b"x",
            "C:evil.png": b"x", "..\\..\\evil.png": b"x", "cat/../../evil.png": b"x", "dog\\ok.png": GOOD["dog/0.png"]}),
        "symbolic links": write_zip(root / "links.zip", GOOD, {"cat/passwd.png": "/etc/passwd",
                                                               "dog/up.png": "../../../../etc/shadow"}),
        "file and folder of one name": write_zip(root / "clash.zip", GOOD | {"cat/x": b"a file",
                                                                          "cat/x/1.png": GOOD["cat/1.png"]}),
        "one path twice": write_zip(root / "twice.zip", [*GOOD.items(), ("cat/0.png", b"second copy")]),
        "names too long or deep": write_zip(root / "long.zip", GOOD | {"cat/" + "n" * 300 + ".png": b"x",
                                                                        "dog/" + "d/" * 40 + "1.png": b"x"}),
        "bomb by ratio (12 x 200 MB of zeros)": zeros_zip(root / "ratio.zip", 12, 200),
        "bomb by entry count (250,000 entries)": write_zip(root / "count.zip", {f"cat/{i}": b"" for i in range(250_000)}),
        "nested zips": write_zip(root / "nested.zip", GOOD | {f"cat/inner{i}.zip": inner.getvalue() for i in range(3)}),
    }


def test_every_hostile_zip_is_refused_or_stripped_with_reasons(corpus, tmp_path, capsys):
    results = {name: ingest_apart(path, tmp_path / f"ws{i}") for i, (name, path) in enumerate(corpus.items())}
    with capsys.disabled():
        print(f"\n{'zip':<40}{'packed MB':>10}{'outcome':>10}{'written MB':>12}{'growth MB':>11}")
        for name, out in results.items():
            outcome = "refused" if out["error"] else f"{len(out.get('refused', []))} out"
            print(f"{name:<40}{corpus[name].stat().st_size / 1024**2:>10.1f}{outcome:>10}"
                  f"{out['written_mb']:>12.1f}{out['growth_mb']:>11.1f}")
    for name, out in results.items():
        assert out["written_mb"] < 2048 and out["growth_mb"] < MAX_GROWTH_MB, (name, out)
    assert not list(tmp_path.parent.rglob("evil.png"))  # nothing escaped the workspace

    escape = results["escaping names"]
    assert len(escape["refused"]) == 7 and all("outside" in reason for _, reason in escape["refused"])
    assert "dog/ok.png" in escape["files"]  # a backslash is a folder separator, inside the zip
    links = results["symbolic links"]
    assert sorted(path for path, _ in links["refused"]) == ["cat/passwd.png", "dog/up.png"]
    assert all("symbolic link" in reason for _, reason in links["refused"]) and "cat/passwd.png" not in links["files"]
    clash = results["file and folder of one name"]
    assert clash["refused"] == [["cat/x", "a file and a folder have this name; the folder was kept"]]
    assert "cat/x/1.png" in clash["files"]
    twice = results["one path twice"]
    assert [path for path, _ in twice["refused"]] == ["cat/0.png"] and "cat/0.png" in twice["files"]
    assert len(results["names too long or deep"]["refused"]) == 2
    assert "zip bomb" in results["bomb by ratio (12 x 200 MB of zeros)"]["error"]
    assert "250000 files" in results["bomb by entry count (250,000 entries)"]["error"]
    nested = results["nested zips"]  # stored as the files they are, never unpacked
    assert nested["error"] is None and "cat/inner0.zip" in nested["files"]
    assert not any("deep.png" in f for f in nested["files"])
