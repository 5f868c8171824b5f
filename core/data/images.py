"""Decoding any image Pillow reads into a deterministic 3-channel tensor.

8-bit images come back as uint8 (the fast common path). 16-bit, 32-bit and float images (microscopy,
terahertz, medical TIFFs) come back as float32 in [0, 1] so their precision survives to the network:
16-bit data is scaled by its full range (65535), never clipped at 255.
Checking an image (inspect_image, open_image) needs no torch: `inspect` and the Data page's report start in a
second, not after torch's import (several seconds); the tensor functions import it where they run.
"""
from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

# Pillow's own warning threshold; a 9400x9400 scan still fits. Our check runs per image, on the header, before any
# pixel is decoded. Pillow's process-wide guard (Image.MAX_IMAGE_PIXELS) is left as it is: other code in the
# process relies on it, so nothing here can lift the hard cap it sets (twice its value).
MAX_PIXELS = 89_478_485
IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
    ".jp2", ".j2k", ".ico", ".tga", ".dib", ".pcx", ".sgi", ".im", ".eps", ".dds", ".psd", ".fits", ".qoi",
}
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white, always

Source = Path | str | bytes


class ImageError(ValueError):
    """An image that cannot be used; the message is a sentence for a person."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str
    frames: int


def open_image(source: Source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open lazily and refuse what is not an image or would decompress into too many pixels."""
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        img = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning, where it is an error
        raise ImageError(_bomb_message(max_pixels)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("not an image: Pillow cannot read this file as any image format") from exc
    if img.width * img.height > max_pixels:
        raise ImageError(_too_large_message(img.size, max_pixels))
    return img


def inspect_image(source: Source, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Fully decode once (catching truncation and corruption) and describe the image."""
    img = open_image(source, max_pixels)
    try:
        # counting frames walks a whole animation or multi-page TIFF: broken data raises here too
        info = ImageInfo(img.width, img.height, img.mode, img.format or "?", getattr(img, "n_frames", 1))
        img.draft("RGB", (64, 64))  # JPEG only: decoding at 1/8 scale still reads every byte
        img.load()
        if img.format == "PNG" and not png_pixels_complete(source):
            raise ImageError("corrupt or truncated image (its pixel data ends before the last row)")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # a frame or tile larger than the header said
        raise ImageError(_bomb_message(max_pixels)) from exc
    except Exception as exc:  # Pillow raises many types for broken files
        raise ImageError(f"corrupt or truncated image ({_short(exc)})") from exc
    finally:
        img.close()
    return info


def png_pixels_complete(source: Source) -> bool:
    """Whether a PNG's compressed pixel stream (its IDAT chunks) ends where its header says, after every row.
    Pillow fills rows missing from a stream cut short with black, without an error, when the chunks around it are
    whole; a 100-byte file claiming 88 megapixels with one row of data would pass as an image. Unpacked a megabyte
    at a time and counted, never held."""
    with open(source, "rb") if not isinstance(source, bytes) else io.BytesIO(source) as f:
        f.read(8)
        stream, unpacked, expected = zlib.decompressobj(), 0, None
        while len(head := f.read(8)) == 8:
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            data = f.read(length) if kind in (b"IHDR", b"IDAT") else f.seek(length, io.SEEK_CUR) and b""
            f.read(4)  # crc
            if kind == b"IHDR":
                expected = _png_stream_bytes(data)
            elif kind == b"IDAT":
                while data and not stream.eof:
                    unpacked += len(stream.decompress(data, 1 << 20))
                    data = stream.unconsumed_tail
            elif kind == b"IEND":
                break
        return stream.eof and unpacked == expected


def _png_stream_bytes(ihdr: bytes) -> int:
    """Bytes of filtered scanlines a PNG header promises (each row: a filter byte, then its pixels)."""
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, colour, interlaced = ihdr[8], ihdr[9], ihdr[12]
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    total = 0
    for x0, y0, dx, dy in passes if interlaced else [(0, 0, 1, 1)]:  # Adam7: seven sub-images
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-w * bits // 8))
    return total


def decode_image(source: Source, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Any image -> (3, H, W) tensor: uint8, or float32 in [0, 1] for high bit depths.

    `min_side` lets JPEG decode at a reduced scale that still leaves the shorter side at least that long.
    """
    img = open_image(source, max_pixels)
    try:
        img.seek(0)  # animated images: the first frame
        if min_side and img.format == "JPEG":
            img.draft("RGB", _draft_size(img.size, min_side))
        img = ImageOps.exif_transpose(img)
        return to_tensor(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # a frame or tile larger than the header said
        raise ImageError(_bomb_message(max_pixels)) from exc
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image ({_short(exc)})") from exc


def to_tensor(img: Image.Image) -> torch.Tensor:
    """The mode table: every Pillow mode maps to 3 channels the same way every time."""
    import torch

    if img.mode in _HIGH_DEPTH:
        gray = _scale_high_depth(np.asarray(img), img.mode)
        return torch.from_numpy(gray).unsqueeze(0).expand(3, -1, -1).contiguous()
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:  # incl. PNG colour keys
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND + (255,))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX ...
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """A decoded tensor back to an 8-bit RGB picture, for thumbnails and previews."""
    import torch

    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _scale_high_depth(array: np.ndarray, mode: str) -> np.ndarray:
    """16-bit by its type's full range; 32-bit int and float by theirs when they fit, else min-max."""
    a = array.astype(np.float64)
    a[~np.isfinite(a)] = 0.0
    if mode.startswith("I;16"):
        return (a / 65535.0).astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        return (a / 65535.0).astype(np.float32)
    if mode == "F" and lo >= 0 and hi <= 1:
        return a.astype(np.float32)
    if hi == lo:
        return np.zeros_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    w, h = size
    scale = min_side / min(w, h)
    return (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))


def _too_large_message(size: tuple[int, int], max_pixels: int) -> str:
    limit = f"the {max_pixels / 1e6:.0f} megapixel limit"
    w, h = size
    return f"too large: {w}x{h} pixels ({w * h / 1e6:.0f} megapixels) is over {limit}; downscale it first"


def _bomb_message(max_pixels: int) -> str:
    """Pillow refused before our own check could run; its limit is the lower one then."""
    limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else max_pixels
    return f"too large: over the {limit / 1e6:.0f} megapixel limit; downscale it first"


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."
