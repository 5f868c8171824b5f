"""Decoding: every image Pillow reads becomes a deterministic 3-channel tensor with the pixels a user expects."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, image_bytes
from core.data.images import MAX_PIXELS, ImageError, decode_image, inspect_image, to_pil, to_tensor

pytestmark = pytest.mark.unit

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb_array(h=6, w=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_only(width: int, height: int, rows: int = 1) -> bytes:
    """A valid 1-bit grayscale PNG of any declared size; only `rows` rows of (zero) data are compressed in."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (((width + 7) // 8 + 1) * rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def high_depth(array: np.ndarray, fmt: str = "TIFF") -> bytes:
    return encode(Image.fromarray(array), fmt)


# --- 8-bit modes -> uint8 (3, H, W) -------------------------------------------------------------------------

def test_rgb_png_keeps_every_pixel():
    pixels = rgb_array()
    tensor = decode_image(encode(Image.fromarray(pixels, "RGB"), "PNG"))
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (3, 6, 5)
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), pixels)


def test_rgb_from_file_path_and_str(tmp_path):
    pixels = rgb_array(seed=3)
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.fromarray(pixels, "RGB"), "PNG"))
    for source in (path, str(path)):
        assert np.array_equal(decode_image(source).permute(1, 2, 0).numpy(), pixels)


def test_grayscale_becomes_three_identical_channels():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    tensor = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 4, 5)
    for c in range(3):
        assert np.array_equal(tensor[c].numpy(), gray)


def test_bilevel_mode_1_maps_to_black_and_white():
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    img.putpixel((3, 1), 1)
    tensor = decode_image(encode(img, "PNG"))
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 2, 4)
    expected = np.zeros((2, 4), np.uint8)
    expected[0, 1] = expected[1, 3] = 255
    for c in range(3):
        assert np.array_equal(tensor[c].numpy(), expected)


def test_palette_image_gets_its_palette_colours():
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    tensor = decode_image(encode(img, "PNG"))
    assert tensor[:, 0, 0].tolist() == [255, 0, 0]
    assert tensor[:, 0, 1].tolist() == [0, 255, 0]
    assert tensor[:, 0, 2].tolist() == [0, 0, 255]


def test_palette_with_transparency_composites_onto_white():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    data = encode(img, "PNG", transparency=0)  # index 0 (black) is transparent
    assert "transparency" in Image.open(io.BytesIO(data)).info
    tensor = decode_image(data)
    assert tensor.dtype == torch.uint8
    assert tensor[:, 0, 0].tolist() == list(WHITE)
    assert tensor[:, 0, 1].tolist() == [10, 200, 30]


def test_rgba_transparent_becomes_white_opaque_keeps_colour():
    pixels = np.array([[[255, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    tensor = decode_image(encode(Image.fromarray(pixels, "RGBA"), "PNG"))
    assert tuple(tensor.shape) == (3, 1, 3) and tensor.dtype == torch.uint8
    assert tensor[:, 0, 0].tolist() == list(WHITE)
    assert tensor[:, 0, 1].tolist() == [10, 20, 30]
    assert tensor[:, 0, 2].tolist() == list(WHITE)


def test_rgba_half_transparent_blends_with_white():
    pixels = np.array([[[0, 0, 0, 128]]], dtype=np.uint8)
    value = decode_image(encode(Image.fromarray(pixels, "RGBA"), "PNG"))[:, 0, 0]
    assert all(120 <= v <= 135 for v in value.tolist())  # half black over white is mid grey


def test_la_transparent_becomes_white_opaque_keeps_grey():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (40, 0))
    img.putpixel((1, 0), (40, 255))
    tensor = decode_image(encode(img, "PNG"))
    assert tensor[:, 0, 0].tolist() == list(WHITE)
    assert tensor[:, 0, 1].tolist() == [40, 40, 40]


@pytest.mark.parametrize("mode, key, other", [("L", 0, 200), ("RGB", (0, 0, 0), (200, 10, 10))])
def test_colour_key_transparency_also_becomes_white(mode, key, other):
    """PNG optimisers turn RGBA with on/off alpha into RGB (or L) + a tRNS colour key: still transparent."""
    img = Image.new(mode, (2, 1), key)
    img.putpixel((1, 0), other)
    data = encode(img, "PNG", transparency=key)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    tensor = decode_image(data)
    assert tensor[:, 0, 0].tolist() == list(WHITE)  # the transparent pixel, as for RGBA and P
    expected = [other] * 3 if mode == "L" else list(other)
    assert tensor[:, 0, 1].tolist() == expected


def test_cmyk_jpeg_becomes_rgb_uint8():
    data = encode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "JPEG", quality=95)  # pure cyan ink
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    tensor = decode_image(data)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 8, 8)
    r, g, b = tensor[:, 4, 4].tolist()
    assert r < 20 and g > 235 and b > 235


# --- high bit depth -> float32 in [0, 1] --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_keeps_full_range_and_precision(fmt):
    values = np.array([[0, 1000, 1001, 32768, 65535, 300]], dtype=np.uint16)
    data = high_depth(values, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    tensor = decode_image(data)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 1, 6)
    row = tensor[0, 0]
    assert row[0].item() == 0.0
    assert row[4].item() == pytest.approx(1.0)
    assert row[3].item() == pytest.approx(0.5, abs=1e-4)
    assert row[1].item() == pytest.approx(1000 / 65535, rel=1e-6)
    assert row[2].item() > row[1].item()  # 1000 and 1001 stay distinguishable
    assert row[5].item() == pytest.approx(300 / 65535, rel=1e-6)  # not clipped at 255
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])


def test_16bit_tiff_from_file_is_mode_i16(tmp_path):
    path = tmp_path / "scan.tif"
    path.write_bytes(high_depth(np.full((3, 4), 65535, np.uint16)))
    assert Image.open(path).mode == "I;16"
    tensor = decode_image(path)
    assert tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.ones(3, 3, 4))


def test_32bit_int_within_16bit_range_is_scaled_by_65535():
    values = np.array([[0, 1000, 65535, 32768]], dtype=np.int32)
    data = high_depth(values)
    assert Image.open(io.BytesIO(data)).mode == "I"
    row = decode_image(data)[0, 0]
    assert row.tolist() == pytest.approx([0.0, 1000 / 65535, 1.0, 32768 / 65535], rel=1e-6)


def test_32bit_int_outside_16bit_range_is_min_max_scaled():
    values = np.array([[-100, 0, 100_000, 200_000]], dtype=np.int32)
    tensor = decode_image(high_depth(values))
    assert tensor.dtype == torch.float32
    expected = [(v + 100) / 200_100 for v in (-100, 0, 100_000, 200_000)]
    assert tensor[0, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_float_in_unit_range_is_unchanged_and_nan_becomes_zero():
    values = np.array([[0.0, 0.25, np.nan, 1.0, 0.123456]], dtype=np.float32)
    data = high_depth(values)
    assert Image.open(io.BytesIO(data)).mode == "F"
    tensor = decode_image(data)
    assert tensor.dtype == torch.float32
    assert not torch.isnan(tensor).any()
    assert tensor[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.0, 1.0, 0.123456], abs=1e-7)


def test_float_outside_unit_range_is_min_max_scaled():
    values = np.array([[-2.0, 0.0, 2.0, 6.0]], dtype=np.float32)
    row = decode_image(high_depth(values))[0, 0]
    assert row.tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0], abs=1e-6)


def test_constant_out_of_range_float_is_zeros_not_nan():
    tensor = decode_image(high_depth(np.full((2, 2), 7.5, np.float32)))
    assert torch.equal(tensor, torch.zeros(3, 2, 2))


def test_to_tensor_high_depth_mode_table_directly():
    img = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    tensor = to_tensor(img)
    assert tensor.dtype == torch.float32 and tensor[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


# --- orientation, animation, determinism --------------------------------------------------------------------

@pytest.mark.parametrize("orientation, top_colour", [(6, RED), (8, BLUE)])
def test_exif_orientation_is_applied(orientation, top_colour):
    img = Image.new("RGB", (40, 20))
    img.paste(RED, (0, 0, 20, 20))  # left half red
    img.paste(BLUE, (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    tensor = decode_image(encode(img, "JPEG", exif=exif, quality=95))
    assert tuple(tensor.shape) == (3, 40, 20)  # 40 wide x 20 high stored, shown 20 wide x 40 high
    top, bottom = tensor[:, 5, 10].tolist(), tensor[:, 34, 10].tolist()
    other = BLUE if top_colour == RED else RED
    assert np.allclose(top, top_colour, atol=30)
    assert np.allclose(bottom, other, atol=30)


def test_no_exif_orientation_keeps_shape():
    tensor = decode_image(encode(Image.new("RGB", (40, 20), RED), "JPEG"))
    assert tuple(tensor.shape) == (3, 20, 40)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert inspect_image(data).frames == 3
    tensor = decode_image(data)
    assert tuple(tensor.shape) == (3, 8, 8)
    assert tensor[:, 4, 4].tolist() == list(RED)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decoding_twice_gives_identical_tensors(fmt):
    data = image_bytes((120, 80, 200), (48, 40), fmt, seed=7)
    a, b = decode_image(data), decode_image(data)
    assert a.dtype == b.dtype and torch.equal(a, b)


def test_decoding_high_depth_twice_is_identical():
    data = high_depth(np.random.default_rng(1).integers(0, 65536, (9, 7), dtype=np.uint16))
    assert torch.equal(decode_image(data), decode_image(data))


# --- inspect_image --------------------------------------------------------------------------------------------

def test_inspect_describes_the_image():
    info = inspect_image(image_bytes(size=(30, 20), fmt="JPEG"))
    assert (info.width, info.height, info.mode, info.format, info.frames) == (30, 20, "RGB", "JPEG", 1)


def test_inspect_reports_16bit_mode(tmp_path):
    path = tmp_path / "a.tif"
    path.write_bytes(high_depth(np.zeros((5, 6), np.uint16)))
    info = inspect_image(path)
    assert (info.width, info.height, info.mode, info.format) == (6, 5, "I;16", "TIFF")


# --- refusals ------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, then ours refuses
def test_decompression_bomb_png_is_too_large():
    bomb = png_header_only(10_000, 10_000, rows=10_000)  # a real, complete 100 Mpx image in ~12 KB
    assert len(bomb) < 100_000 and 10_000 * 10_000 > MAX_PIXELS
    for fn in (inspect_image, decode_image):
        with pytest.raises(ImageError, match="too large"):
            fn(bomb)


def test_far_over_pillows_own_threshold_is_too_large():
    with pytest.raises(ImageError, match="too large"):
        inspect_image(png_header_only(20_000, 20_000))


def test_max_pixels_argument_below_image_size_is_refused():
    data = image_bytes(size=(40, 30))
    assert decode_image(data, max_pixels=1200).shape == (3, 30, 40)  # exactly at the limit is fine
    with pytest.raises(ImageError, match="too large"):
        decode_image(data, max_pixels=1199)
    with pytest.raises(ImageError, match="too large"):
        inspect_image(data, max_pixels=100)


@pytest.mark.integration
def test_pillows_process_wide_guard_is_left_alone():
    """Other code in the server process (thumbnails, charts, libraries) keeps Pillow's own bomb protection."""
    code = ("from PIL import Image; default = Image.MAX_IMAGE_PIXELS; import core.data.images; "
            "assert Image.MAX_IMAGE_PIXELS == default == 89_478_485, Image.MAX_IMAGE_PIXELS")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns over 89 Mpx
def test_the_limit_is_checked_per_image_and_a_large_allowed_one_still_opens():
    from core.data.images import open_image

    # Over Pillow's warning threshold but under the caller's limit (and Pillow's hard cap): allowed.
    img = open_image(png_header_only(10_000, 9_500), max_pixels=100_000_000)
    assert img.size == (10_000, 9_500)
    assert decode_image(png_header_only(3_000, 2_000, rows=2_000), max_pixels=6_000_000).shape == (3, 2_000, 3_000)
    # Over Pillow's hard cap: refused with a sentence, whatever the caller asked for (the global stays).
    for limit in (MAX_PIXELS, 500_000_000):
        with pytest.raises(ImageError, match=r"^too large: over the \d+ megapixel limit; downscale it first$"):
            open_image(png_header_only(20_000, 20_000), max_pixels=limit)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_corrupt_or_truncated(fmt, tmp_path):
    data = image_bytes((90, 140, 60), (128, 128), fmt, seed=2)
    half = data[: len(data) // 2]
    with pytest.raises(ImageError, match="corrupt or truncated"):
        inspect_image(half)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(half)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(half)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        inspect_image(path)


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("this is a shopping list, not a photo\n")
    with pytest.raises(ImageError, match="not an image"):
        inspect_image(path)
    with pytest.raises(ImageError, match="not an image"):
        decode_image(path)


def test_zero_byte_file_is_not_an_image(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="not an image"):
        inspect_image(path)
    with pytest.raises(ImageError):
        decode_image(b"")


def test_image_error_is_a_value_error():
    with pytest.raises(ValueError):
        decode_image(b"GIF89a nonsense")


# --- reduced-scale JPEG decoding -----------------------------------------------------------------------------

def test_min_side_decodes_large_jpeg_smaller_but_not_below_min_side():
    data = image_bytes((100, 150, 200), (1000, 800), "JPEG", seed=4)
    full = decode_image(data)
    assert tuple(full.shape) == (3, 800, 1000)
    small = decode_image(data, min_side=100)
    h, w = small.shape[1:]
    assert min(h, w) >= 100
    assert h < 800 and w < 1000
    assert abs(w / h - 1000 / 800) < 0.02  # aspect kept


def test_min_side_larger_than_image_keeps_full_size():
    data = image_bytes(size=(64, 48), fmt="JPEG")
    assert tuple(decode_image(data, min_side=224).shape) == (3, 48, 64)


def test_min_side_is_ignored_for_png():
    data = image_bytes(size=(400, 300), fmt="PNG")
    assert tuple(decode_image(data, min_side=50).shape) == (3, 300, 400)


@pytest.mark.parametrize("side, min_side", [(376, 48), (766, 384)])
def test_min_side_is_a_guarantee_for_every_size(side, min_side):
    """Reduced decoding must never go below min_side, whatever float rounding does to the requested size."""
    data = encode(Image.new("RGB", (side, side), (100, 150, 200)), "JPEG")
    tensor = decode_image(data, min_side=min_side)
    assert min(tensor.shape[1:]) >= min_side


# --- to_pil ----------------------------------------------------------------------------------------------------

def test_to_pil_round_trips_uint8():
    tensor = torch.from_numpy(rgb_array(7, 9, seed=5)).permute(2, 0, 1).contiguous()
    img = to_pil(tensor)
    assert img.mode == "RGB" and img.size == (9, 7)
    assert torch.equal(to_tensor(img), tensor)


def test_to_pil_float_scales_to_8bit_and_clamps():
    tensor = torch.tensor([0.0, 1.0, 0.2, 1.5, -0.3], dtype=torch.float32).view(1, 1, 5).expand(3, 1, 5)
    img = to_pil(tensor.contiguous())
    assert img.mode == "RGB" and img.size == (5, 1)
    assert [img.getpixel((x, 0))[0] for x in range(5)] == [0, 255, 51, 255, 0]


def test_to_pil_of_decoded_16bit_image():
    data = high_depth(np.array([[0, 65535, 32768]], dtype=np.uint16))
    img = to_pil(decode_image(data))
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (255, 255, 255), (128, 128, 128)]


def interlaced_png(width: int, height: int, drop_last_row: bool = False) -> bytes:
    """An Adam7-interlaced RGB PNG built by hand (Pillow writes none): seven sub-images of filtered rows."""
    import struct
    import zlib

    rows = []
    for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)]:
        for y in range(y0, height, dy):
            xs = range(x0, width, dx)
            if xs:
                rows.append(b"\0" + bytes(v for x in xs for v in (x * 20 % 256, y * 40 % 256, 90)))
    raw = b"".join(rows[:-1] if drop_last_row else rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_interlaced_png_is_complete_and_one_missing_row_is_caught():
    whole = interlaced_png(13, 9)
    assert inspect_image(whole).width == 13
    assert decode_image(whole)[:, 8, 12].tolist() == [12 * 20 % 256, 8 * 40 % 256, 90]
    with pytest.raises(ImageError, match="ends before the last row"):
        inspect_image(interlaced_png(13, 9, drop_last_row=True))
