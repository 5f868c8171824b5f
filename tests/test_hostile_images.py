"""200 hostile image files among good ones (issue 16): validation skips each with a reason or accepts it, what it
accepts decodes for training, and nothing crashes, hangs, or grows the server by 200 MB.

The corpus is generated here from valid images (seeded): truncated, bit-flipped, misnamed, claiming giant sizes,
animated with hundreds of frames or odd frames, empty, and folders named like images.
"""
from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from conftest import COLOURS, PEAK_MB, RESTART_PEAK, ROOT, image_bytes, make_dataset
from core.config import AugmentConfig
from core.data.augment import train_transform
from core.data.images import ImageError, inspect_image
from core.data.loaders import ImageDataset
from core.data.validation import open_dataset

pytestmark = pytest.mark.integration

VALIDATE = PEAK_MB + """
from core.data.validation import load_dataset
""" + RESTART_PEAK + """
dataset = load_dataset(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({"key": dataset.key, "growth_mb": peak_mb() - before}))
"""
MAX_GROWTH_MB = 200
KINDS = {"truncated": 40, "bit-flipped": 60, "wrong extension": 20, "giant dimensions": 20,
         "animated or odd frames": 25, "empty": 10, "folder named like an image": 5, "magic bytes then noise": 20}
ALWAYS_SKIPPED = ("truncated", "giant dimensions", "empty")
REASON_WORDS = {"giant dimensions": ("too large", "corrupt or truncated"), "empty": ("empty file",),
                "wrong extension": ("named like an image",)}  # a skip for these says one of these
GOOD_PER_CLASS = 17
TAIL = 24  # what follows the pixels at most (a PNG's IEND, a GIF's trailer): a cut before it loses pixels
AUG = AugmentConfig(image_size=32)


@dataclass(frozen=True)
class Mutant:
    kind: str
    path: str  # relative to the dataset folder
    data: bytes
    name: str


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def picture(seed: int, size=(40, 32)) -> Image.Image:
    return Image.open(io.BytesIO(image_bytes((90, 140, 200), size, seed=seed))).convert("RGB")


def sixteen_bit(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 65535, (32, 40), dtype=np.uint16))


BASES = {  # name -> (extension, encoder of a seed)
    "png": (".png", lambda s: encode(picture(s), "PNG")),
    "png-rgba": (".png", lambda s: encode(picture(s).convert("RGBA"), "PNG")),
    "jpeg": (".jpg", lambda s: encode(picture(s), "JPEG")),
    "jpeg-progressive": (".jpeg", lambda s: encode(picture(s), "JPEG", progressive=True)),
    "gif": (".gif", lambda s: encode(picture(s), "GIF")),
    "tiff": (".tif", lambda s: encode(picture(s), "TIFF")),
    "tiff-16bit": (".tiff", lambda s: encode(sixteen_bit(s), "TIFF")),
    "webp": (".webp", lambda s: encode(picture(s), "WEBP")),
    "webp-lossless": (".webp", lambda s: encode(picture(s), "WEBP", lossless=True)),
    "bmp": (".bmp", lambda s: encode(picture(s), "BMP")),
}


# --- crafting: chunks, headers and frames of real formats ------------------------------------------------------

def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at < len(png):
        (length,), tag = struct.unpack(">I", png[at:at + 4]), png[at + 4:at + 8]
        chunks.append((tag, png[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(tag, data) for tag, data in chunks)


def png_claiming(width: int, height: int, depth: int = 8, colour: int = 2, zeros: int = 64) -> bytes:
    """A valid PNG header of any size over `zeros` bytes of pixel data (a bomb when that is every row)."""
    idat = zlib.compressobj(9)
    body = b"".join(idat.compress(bytes(min(1 << 20, zeros - at))) for at in range(0, zeros, 1 << 20)) + idat.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return png_from([(b"IHDR", ihdr), (b"IDAT", body), (b"IEND", b"")])


def png_rows_missing(png: bytes) -> bytes:
    """Half the rows, in well-formed chunks with valid CRCs: truncated where only the row count can tell."""
    chunks = png_chunks(png)
    rows = zlib.decompress(b"".join(data for tag, data in chunks if tag == b"IDAT"))
    kept = [(tag, data) for tag, data in chunks if tag not in (b"IDAT", b"IEND")]
    return png_from(kept + [(b"IDAT", zlib.compress(rows[:len(rows) // 2])), (b"IEND", b"")])


def apng(frames: list[Image.Image]) -> bytes:
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def apng_patched(png: bytes, tag: bytes, patch) -> bytes:
    """Every `tag` chunk rewritten by patch(index, data), with a correct CRC: only the meaning is hostile."""
    out, seen = [], 0
    for t, data in png_chunks(png):
        if t == tag:
            data, seen = patch(seen, data), seen + 1
        out.append((t, data))
    return png_from(out)


def gif_frames(count: int, seed: int, size=(16, 16), sizes: list[tuple[int, int]] | None = None) -> bytes:
    """Palette frames (no quantising, so 500 frames encode fast), one colour table for all."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        w, h = sizes[i] if sizes else size
        frame = Image.fromarray(rng.integers(0, 16, (h, w), dtype=np.uint8), "P")
        frame.putpalette(list(range(0, 256, 16)) * 3)
        frames.append(frame)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], disposal=2, optimize=False)


def gif_descriptors(gif: bytes) -> list[int]:
    """Offsets of every image descriptor (0x2C) in a well-formed GIF."""
    flags = gif[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    found = []
    while gif[at] != 0x3B:
        if gif[at] == 0x21:
            at += 2
        else:
            found.append(at)
            local = gif[at + 9]
            at += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
        while gif[at]:
            at += gif[at] + 1
        at += 1
    return found


def gif_placed(gif: bytes, place) -> bytes:
    """Frames moved or resized by place(index) -> (left, top, width, height) or None, pixels untouched."""
    out = bytearray(gif)
    for i, at in enumerate(gif_descriptors(gif)):
        if (box := place(i)) is not None:
            out[at + 1:at + 9] = struct.pack("<4H", *box)
    return bytes(out)


def tiff_claiming(width: int, height: int, bits: int = 8) -> bytes:
    """A baseline grayscale TIFF declaring any size, with 16 bytes of pixels."""
    long = (256, 257, 273, 278, 279)  # the other tags are SHORT
    tags = {256: width, 257: height, 258: bits, 259: 1, 262: 1, 273: 8 + 2 + 9 * 12 + 4, 277: 1, 278: height, 279: 16}
    entries = [struct.pack("<HHII", t, 4, 1, v) if t in long else struct.pack("<HHIHH", t, 3, 1, v, 0)
               for t, v in sorted(tags.items())]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + bytes(range(16))


def jpeg_claiming(width: int, height: int, seed: int) -> bytes:
    data = bytearray(BASES["jpeg"][1](seed))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int, seed: int) -> bytes:
    data = bytearray(BASES["bmp"][1](seed))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def webp_claiming(width: int, height: int, seed: int) -> bytes:
    data = bytearray(BASES["webp"][1](seed))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"  # a simple lossy WebP: frame size at 26
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


# --- the corpus -------------------------------------------------------------------------------------------------

def build_corpus(rng: np.random.Generator) -> list[tuple[str, str, bytes]]:
    """(kind, file name, content), as many of each kind as KINDS says."""
    seeds = iter(range(50_000, 10**9))
    names = list(BASES)
    made: list[tuple[str, str, bytes]] = []

    def base(i: int) -> tuple[str, str, bytes]:
        name = names[i % len(names)]
        return name, BASES[name][0], BASES[name][1](next(seeds))

    for i in range(KINDS["truncated"]):
        name, ext, data = base(i)
        if i in (0, 20):
            made.append(("truncated", f"cut{i}-{name}-rows-missing{ext}", png_rows_missing(data)))
            continue
        cut = int(rng.integers(1, len(data) - TAIL))
        made.append(("truncated", f"cut{i}-{name}-at{cut}{ext}", data[:cut]))

    for i in range(KINDS["bit-flipped"]):
        name, ext, data = base(i)
        flipped = bytearray(data)
        where = "header" if i % 2 == 0 else "body"
        span = (0, 64) if where == "header" else (64, len(data))
        for _ in range(int(rng.integers(1, 9))):
            flipped[int(rng.integers(*span))] ^= 1 << int(rng.integers(8))
        made.append(("bit-flipped", f"flip{i}-{name}-{where}{ext}", bytes(flipped)))

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("cat/1.png", BASES["png"][1](next(seeds)))
    misnamed = [
        *[(f"png-as{i}.jpg", BASES["png"][1](next(seeds))) for i in range(4)],
        *[(f"jpeg-as{i}.png", BASES["jpeg"][1](next(seeds))) for i in range(4)],
        ("gif-as.bmp", BASES["gif"][1](next(seeds))), ("webp-as.tif", BASES["webp"][1](next(seeds))),
        ("tiff16-as.webp", BASES["tiff-16bit"][1](next(seeds))), ("bmp-as.gif", BASES["bmp"][1](next(seeds))),
        ("text.png", b"holiday photos, see the other folder\n"),
        ("page.jpg", b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>\n"),
        ("archive.png", zipped.getvalue()),
        ("document.jpg", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"),
        ("drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9"/></svg>'),
        ("metadata.jpeg", json.dumps({"label": "cat", "width": 32}).encode()),
        ("script.webp", b"#!/bin/sh\necho not an image\n"),
        ("utf16.tif", "not an image".encode("utf-16")),
    ]
    made += [("wrong extension", name, data) for name, data in misnamed]

    s = next(seeds)
    gif1 = gif_frames(1, s)
    giants = [
        ("png-100000x100000.png", png_claiming(100_000, 100_000)),
        ("png-65535x65535-rgba16.png", png_claiming(65_535, 65_535, depth=16, colour=6)),
        ("png-1x100000000.png", png_claiming(1, 100_000_000)),
        ("png-100000000x1.png", png_claiming(100_000_000, 1)),
        ("png-2147483647-square.png", png_claiming(2**31 - 1, 2**31 - 1)),
        ("png-10000x9000-just-over.png", png_claiming(10_000, 9_000)),
        ("png-9400x9400-under-limit-one-row.png", png_claiming(9_400, 9_400, zeros=9_400 * 3 + 1)),
        ("png-bomb-20000x20000-all-rows.png", png_claiming(20_000, 20_000, depth=1, colour=0, zeros=2_501 * 20_000)),
        ("jpeg-65500x65500.jpg", jpeg_claiming(65_500, 65_500, s)),
        ("jpeg-60000x2000.jpg", jpeg_claiming(60_000, 2_000, s + 1)),
        ("gif-screen-65535x65535.gif", gif1[:6] + struct.pack("<HH", 65_535, 65_535) + gif1[10:]),
        ("gif-frame-65535x65535.gif", gif_placed(gif1, lambda i: (0, 0, 65_535, 65_535))),
        ("bmp-50000x50000.bmp", bmp_claiming(50_000, 50_000, s)),
        ("bmp-topdown-100000.bmp", bmp_claiming(100_000, -100_000, s + 1)),
        ("tiff-100000x100000.tif", tiff_claiming(100_000, 100_000)),
        ("tiff16-70000x70000.tiff", tiff_claiming(70_000, 70_000, bits=16)),
        ("webp-16383x16383.webp", webp_claiming(16_383, 16_383, s)),
        ("ppm-100000x100000.ppm", b"P6 100000 100000 255\n" + bytes(64)),
        ("pgm16-70000x70000.pgm", b"P5 70000 70000 65535\n" + bytes(64)),
        ("psd-30000x30000.psd", b"8BPS\0\1" + bytes(6) + struct.pack(">HIIHH", 3, 30_000, 30_000, 8, 3) + bytes(64)),
    ]
    made += [("giant dimensions", name, data) for name, data in giants]

    s = next(seeds)
    frames = [picture(s + i, (16, 16)) for i in range(500)]
    gif5, apng5 = gif_frames(5, s), apng(frames[:5])
    odd = [(16, 16), (1, 1), (64, 8), (3, 40), (16, 16)]

    def cut(data: bytes, after: int) -> bytes:
        return data[:int(rng.integers(after, len(data) - 1))]

    tiff_pages = encode(frames[0], "TIFF", save_all=True, append_images=[
        picture(s, (64, 8)), sixteen_bit(s), frames[1].convert("L"), frames[2].convert("CMYK")])
    animated = [
        ("gif-500-frames.gif", gif_frames(500, s)),
        ("gif-500-odd-frame-sizes.gif", gif_frames(500, s + 1, sizes=[odd[i % 5] for i in range(500)])),
        ("apng-500-frames.png", apng(frames)),
        ("webp-500-frames.webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])),
        ("gif-frames-outside-screen.gif", gif_placed(gif5, lambda i: (60_000, 60_000, 16, 16) if i else None)),
        ("gif-later-frame-larger-than-screen.gif", gif_placed(gif5, lambda i: (0, 0, 64, 64) if i else None)),
        ("gif-500-tiny-frames-far-away.gif", gif_placed(gif_frames(500, s + 2, size=(1, 1)),
                                                        lambda i: (65_000, 65_000, 1, 1) if i else None)),
        ("apng-frame-larger-than-canvas.png", apng_patched(apng5, b"fcTL", lambda i, d: d[:4] + struct.pack(
            ">II", 4096, 4096) + d[12:] if i == 2 else d)),
        ("apng-claims-2147483647-frames.png", apng_patched(apng5, b"acTL", lambda i, d: struct.pack(">I", 2**31 - 1)
                                                           + d[4:])),
        ("apng-claims-0-frames.png", apng_patched(apng5, b"acTL", lambda i, d: bytes(4) + d[4:])),
        ("tiff-5-pages-mixed-sizes-and-depths.tif", tiff_pages),
        *[(f"gif-animated-cut{i}.gif", cut(gif5, len(gif5) // 5)) for i in range(5)],
        *[(f"tiff-pages-cut{i}.tif", cut(tiff_pages, len(tiff_pages) // 5)) for i in range(3)],
        *[(f"apng-cut{i}.png", cut(apng5, len(apng5) // 5)) for i in range(3)],
        *[(f"webp-animated-cut{i}.webp", cut(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:5]), 64))
          for i in range(3)],
    ]
    made += [("animated or odd frames", name, data) for name, data in animated]

    made += [("empty", f"empty{i}{ext}", b"") for i, ext in enumerate(
        (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp", ".bmp", ".PNG", ".JPG"))]
    made += [("folder named like an image", f"photo{i}{ext}/inside.png", BASES["png"][1](next(seeds)))
             for i, ext in enumerate((".png", ".jpg", ".gif", ".tif", ".webp"))]

    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0))
    magics = [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + ihdr, b"\xff\xd8\xff\xe0", b"GIF89a",
              b"GIF87a\x20\x00\x20\x00", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0", b"MM\0*", b"BM", b"P6\n32 32\n255\n"]
    extensions = (".png", ".png", ".jpg", ".gif", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".ppm")
    for i in range(KINDS["magic bytes then noise"]):
        noise = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
        made.append(("magic bytes then noise", f"magic{i}{extensions[i % 10]}", magics[i % 10] + noise))
    return made


def write_corpus(root: Path) -> list[Mutant]:
    """Two trainable classes of good images, the mutants shared out between them."""
    make_dataset(root, {"a": GOOD_PER_CLASS - 5, "b": GOOD_PER_CLASS - 5})
    for c, cls in enumerate("ab"):
        for fmt in ("JPEG", "GIF", "WEBP", "TIFF", "BMP"):
            (root / cls / f"good.{fmt.lower()}").write_bytes(image_bytes(COLOURS[c], fmt=fmt, seed=900 + c))
    mutants = []
    for i, (kind, name, data) in enumerate(build_corpus(np.random.default_rng(16))):
        path = f"{'ab'[i % 2]}/{name}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        mutants.append(Mutant(kind, path, data, name))
    (root / "b" / "empty-folder.jpg").mkdir()
    return mutants


def crashing(root: Path, mutants: list[Mutant]) -> list[str]:
    """Which files make the scan raise something other than a reason: named in the failure, so it can be fixed."""
    found = []
    for m in mutants:
        try:
            inspect_image(root / m.path)
        except ImageError:
            pass
        except Exception as exc:  # what escapes inspect_image escapes validation too
            found.append(f"{m.path} ({m.kind}): {type(exc).__name__}: {exc}")
    return found


def validate_apart(root: Path, workspace: Path) -> dict:
    """A fresh process: its peak memory is this validation's, and a hang or a crash in a decoder cannot take the
    test run with it."""
    done = subprocess.run([sys.executable, "-c", VALIDATE, str(root), str(workspace)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    return {"rc": done.returncode, "stderr": done.stderr, **(json.loads(done.stdout.splitlines()[-1])
                                                             if done.returncode == 0 else {})}


def reason_group(reason: str) -> str:
    return re.split(r"[:(]| of ", reason)[0].strip()


def expected(m: Mutant) -> str:
    """skip, accept or either: a bit flip may leave a decodable image; a truncation, a giant or nothing never does."""
    if m.kind in ALWAYS_SKIPPED:
        return "skip"
    if m.kind == "wrong extension":
        return "accept" if "-as" in m.name else "skip"  # content decides, not the name
    return "either"


def judge(m: Mutant, skipped: dict[str, str], accepted: dict) -> str:
    """What went wrong with one mutant's outcome, or ''."""
    if (m.path in skipped) == (m.path in accepted):
        return f"{m.path} ({m.kind}): {'both skipped and accepted' if m.path in skipped else 'lost: neither reported'}"
    want = expected(m)
    if m.path in accepted:
        return f"{m.path} ({m.kind}, {len(m.data)} bytes): accepted, expected skipped" if want == "skip" else ""
    reason = skipped[m.path]
    if want == "accept" or not reason.strip() or not any(w in reason for w in REASON_WORDS.get(m.kind, ("",))):
        return f"{m.path} ({m.kind}): skipped with reason {reason!r}"
    return ""


def undecodable(dataset, taken: list) -> list[str]:
    """Accepted files through the decode and transform training runs them through."""
    images = ImageDataset(dataset.data_dir, taken, train_transform(AUG, (0.5,) * 3, (0.5,) * 3), AUG.resize_side())
    found = []
    for i, sample in enumerate(taken):
        try:
            tensor, _ = images[i]
        except Exception as exc:  # any escape here would stop a training run
            found.append(f"{sample.path}: accepted, but training cannot decode it: {type(exc).__name__}: {exc}")
            continue
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != (3, 32, 32) or not torch.isfinite(tensor).all():
            found.append(f"{sample.path}: accepted, but decodes to {tensor.dtype} {tuple(tensor.shape)} with "
                         f"{int((~torch.isfinite(tensor)).sum())} non-finite values")
    return found


def test_every_hostile_image_is_skipped_with_a_reason_or_decodes(workspace, tmp_path, capsys):
    started = time.perf_counter()
    root = tmp_path / "upload"
    mutants = write_corpus(root)
    assert Counter(m.kind for m in mutants) == KINDS and len({m.path for m in mutants}) == 200
    assert max(len(m.data) for m in mutants) < 1024**2  # giants only claim their size

    out = validate_apart(root, workspace)
    assert out["rc"] == 0, ("validation crashed; files the scan cannot turn into a reason:\n"
                            + "\n".join(crashing(root, mutants)) + "\n" + out["stderr"][-3000:])
    dataset = open_dataset(out["key"], workspace)
    skipped = {s.path: s.reason for s in dataset.report.skipped}
    accepted = {s.path: s for s in dataset.samples}
    problems = [problem for m in mutants if (problem := judge(m, skipped, accepted))]
    taken = [accepted[m.path] for m in mutants if m.path in accepted and expected(m) != "skip"]
    problems += undecodable(dataset, taken)
    good = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {m.path for m in mutants}

    reasons = Counter(reason_group(skipped[m.path]) for m in mutants if m.path in skipped)
    with capsys.disabled():
        print(f"\n{'mutant kind':<28}{'made':>6}{'skipped':>9}{'accepted':>10}")
        for kind, made in KINDS.items():
            n = sum(m.path in skipped for m in mutants if m.kind == kind)
            print(f"{kind:<28}{made:>6}{n:>9}{made - n:>10}")
        print(f"{'all':<28}{len(mutants):>6}{sum(reasons.values()):>9}{len(mutants) - sum(reasons.values()):>10}")
        print("skipped by reason: " + ", ".join(f"{why} {n}" for why, n in reasons.most_common()))
        print(f"{len(good & set(accepted))} of {len(good)} good images kept; {len(taken)} accepted mutants decoded; "
              f"validating grew a fresh process by {out['growth_mb']:.1f} MB; {time.perf_counter() - started:.1f} s "
              f"in all; {len(problems)} problems")
    assert not problems, "\n".join(problems)
    assert out["growth_mb"] < MAX_GROWTH_MB, out
    assert good <= set(accepted) and dataset.report.trainable, (good - set(accepted), dataset.report.errors)
