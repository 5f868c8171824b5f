"""A built-in sample dataset, so a first-time user can try the whole app with one click and no data.

The pictures are generated, never shipped or downloaded: the same arguments always give byte-identical PNG
files, so a sample run can be repeated and compared. Each class is one kind of shape (circles, squares,
triangles) at a random position, size and rotation, in a random colour, filled or outlined, on a random
noisy gradient crossed by a few stray lines. Colour, brightness and area say nothing about the class, only
the outline does: an ImageNet-pretrained network separates the classes well, no single pixel statistic does.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_NAME = "shapes"
CLASSES = ("circles", "squares", "triangles")
IMAGES_PER_CLASS = 40
_SUPERSAMPLE = 4  # shapes are drawn at 4x and scaled down: smooth edges, no aliasing pattern per class
_AREA_PER_RADIUS2 = {"circles": math.pi, "squares": 2.0, "triangles": 3 * math.sqrt(3) / 4}
_MIN_CONTRAST = 40.0  # mean absolute RGB difference between a shape and the background behind it


def describe(images_per_class: int = IMAGES_PER_CLASS) -> str:
    """One sentence for the page that offers the sample."""
    return (f"A built-in sample of {len(CLASSES)} classes of {images_per_class} generated pictures each "
            f"({', '.join(CLASSES)} in random colours, sizes and positions on noisy backgrounds), "
            "so you can try the app without data of your own.")


def write_sample(folder: Path, images_per_class: int = IMAGES_PER_CLASS, size: int = 96, seed: int = 0) -> Path:
    """Write the sample as an ImageFolder (folder/<class>/<class>_NNN.png) and return the folder.

    Every picture depends only on (seed, class, index), so a larger count keeps the smaller set's pictures.
    Existing files of the same names are overwritten.
    """
    folder = Path(folder)
    for label, name in enumerate(CLASSES):
        class_dir = folder / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            rng = np.random.default_rng([seed, label, i])
            _picture(name, size, rng).save(class_dir / f"{name}_{i:03d}.png", format="PNG", optimize=False)
    return folder


def _picture(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB picture: gradient background, one anti-aliased shape, then sensor-like noise over all."""
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    background = _with_clutter(low + (high - low) * t[..., None], rng)

    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - (low + high) / 2).mean() < _MIN_CONTRAST:
        colour = rng.uniform(0, 255, 3)

    mask = _shape_mask(shape, size, rng)
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255
    pixels = background * (1 - alpha) + colour * alpha
    pixels += rng.normal(0, rng.uniform(6, 30), pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _with_clutter(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to three thin straight lines across the background: edges that belong to no class."""
    size = background.shape[0]
    layer = Image.fromarray(np.clip(np.rint(background), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.integers(0, 4)):
        ends = [float(v) for v in rng.uniform(0, size, 4)]
        draw.line(ends, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3)))
    return np.asarray(layer, dtype=np.float64)


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A grey-level coverage mask of one shape, kept inside the centre crop the eval transform takes."""
    big = size * _SUPERSAMPLE
    area = rng.uniform(0.03, 0.11) * big * big  # the same area range for every class: size is no cue
    radius = math.sqrt(area / _AREA_PER_RADIUS2[shape])  # of the circle the shape is inscribed in
    margin = 0.08 * big + radius  # the default centre crop drops 6.25% per side
    cx, cy = rng.uniform(margin, big - margin, 2)
    outline = rng.random() < 0.35
    width = round(rng.uniform(0.12, 0.2) * radius)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circles":
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=None if outline else 255, outline=255, width=width if outline else 1)
    else:
        sides = 4 if shape == "squares" else 3
        draw.regular_polygon((cx, cy, radius), sides, rotation=rng.uniform(0, 360 / sides),
                             fill=None if outline else 255, outline=255, width=width if outline else 1)
    return mask.resize((size, size), Image.Resampling.BOX)
