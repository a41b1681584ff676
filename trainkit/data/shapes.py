"""shapes32: a generated 32x32 RGB dataset of filled circles, squares and triangles.

Each image holds one shape of a random colour (hue uniform over the whole circle; mostly
saturated, some dark, some light) at a random position, size and rotation on a plain background
of another colour that differs from it clearly. Shapes are drawn at 4x and box-filtered down, so
edges are antialiased. Everything follows from fixed seeds (numpy + PIL, no downloads): the same
bytes on every call. Splits: train (9,000) and test (1,500), classes balanced.

    python -m trainkit.data.shapes --export DIR [--limit N]   # DIR/{train,test}/{circle,...}/NNNNN.png
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from trainkit.data.fingerprints import stable_hash

SHAPES32_CLASSES = ["circle", "square", "triangle"]
SHAPES32_SIZES = {"train": 9000, "test": 1500}
_SIZE, _SCALE = 32, 4
_SEED = 32
_MOSAIC = 16  # shapes drawn side by side per row of one drawing canvas
_MIN_CONTRAST = 0.4  # least RGB distance (on [0, 1]) between a shape's colour and its background


@dataclass(frozen=True)
class ShapeSpecs:
    """What to draw for N images: class, colours (RGB on [0, 1]), centre, circumradius and angle."""

    labels: np.ndarray  # [N] int64
    colors: np.ndarray  # [N, 3] shape colour
    backgrounds: np.ndarray  # [N, 3]
    centres: np.ndarray  # [N, 2] (x, y) in pixels of the 32x32 image
    radii: np.ndarray  # [N] pixels
    angles: np.ndarray  # [N] radians


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Hue, saturation, value arrays on [0, 1] -> RGB `[..., 3]` on [0, 1]."""
    h6 = (np.asarray(h) % 1.0) * 6.0
    k = np.stack([(5 + h6) % 6, (3 + h6) % 6, (1 + h6) % 6], axis=-1)
    weight = np.clip(np.minimum(k, 4 - k), 0, 1)
    return np.asarray(v)[..., None] * (1 - np.asarray(s)[..., None] * weight)


def _shape_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform hue; mostly saturated and bright, some dark, some light (the shares of `p`)."""
    hue = rng.random(n)
    kind = rng.choice(3, size=n, p=[0.7, 0.15, 0.15])
    bright, dark = kind == 0, kind == 1
    sat = np.select([bright, dark], [rng.uniform(0.75, 1, n), rng.uniform(0.6, 1, n)], rng.uniform(0.25, 0.5, n))
    val = np.select([bright, dark], [rng.uniform(0.8, 1, n), rng.uniform(0.3, 0.55, n)], rng.uniform(0.9, 1, n))
    return hsv_to_rgb(hue, sat, val)


def _backgrounds(rng: np.random.Generator, colors: np.ndarray) -> np.ndarray:
    """Random colours (any hue, saturation and brightness) at least `_MIN_CONTRAST` away from `colors`."""
    out = np.empty_like(colors)
    todo = np.arange(len(colors))
    while todo.size:
        m = todo.size
        candidate = hsv_to_rgb(rng.random(m), rng.uniform(0, 0.9, m), rng.uniform(0.1, 1, m))
        ok = np.linalg.norm(candidate - colors[todo], axis=1) >= _MIN_CONTRAST
        out[todo[ok]] = candidate[ok]
        todo = todo[~ok]
    return out


def sample_specs(n: int, seed: int) -> ShapeSpecs:
    """The shapes of `n` images, a function of `n` and `seed` only; classes as balanced as `n` allows."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPES32_CLASSES)).astype(np.int64)
    colors = _shape_colors(rng, n)
    backgrounds = _backgrounds(rng, colors)
    radii = rng.uniform(5.0, 12.0, n)
    centres = rng.uniform(0, 1, (n, 2)) * (_SIZE - 2 * (radii[:, None] + 1)) + radii[:, None] + 1
    angles = rng.uniform(0, 2 * np.pi, n)
    return ShapeSpecs(labels, colors, backgrounds, centres, radii, angles)


def _draw_shape(draw: ImageDraw.ImageDraw, offset: tuple[int, int], label: int, centre: np.ndarray,
                radius: float, angle: float) -> None:
    """One filled shape, at 4x scale, into the cell of a mosaic whose top-left corner is `offset`."""
    x, y = offset[0] + centre[0] * _SCALE, offset[1] + centre[1] * _SCALE
    r = radius * _SCALE
    name = SHAPES32_CLASSES[label]
    if name == "circle":
        r *= 0.8  # about a square's area
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        return
    sides = 4 if name == "square" else 3
    corners = angle + np.arange(sides) * (2 * np.pi / sides)
    draw.polygon(list(zip((x + r * np.cos(corners)).tolist(), (y + r * np.sin(corners)).tolist())), fill=255)


def _coverage(specs: ShapeSpecs, start: int, stop: int) -> np.ndarray:
    """Fraction of each pixel that the shapes of images start..stop-1 cover: float32 `[n, 32, 32]`.

    The shapes are drawn at 4x, side by side on one mosaic (each stays inside its own cell), and
    the mosaic is box-filtered down, which averages every 4x4 block."""
    n, cell = stop - start, _SIZE * _SCALE
    canvas = Image.new("L", (cell * _MOSAIC, cell * -(-n // _MOSAIC)), 0)
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(range(start, stop)):
        offset = (k % _MOSAIC * cell, k // _MOSAIC * cell)
        _draw_shape(draw, offset, int(specs.labels[i]), specs.centres[i], float(specs.radii[i]), float(specs.angles[i]))
    small = np.asarray(canvas.resize((canvas.width // _SCALE, canvas.height // _SCALE), Image.BOX), np.float32)
    tiles = small.reshape(-1, _SIZE, _MOSAIC, _SIZE).transpose(0, 2, 1, 3).reshape(-1, _SIZE, _SIZE)
    return tiles[:n] / 255.0


def draw_images(specs: ShapeSpecs) -> np.ndarray:
    """The images of `specs` as uint8 `[N, 32, 32, 3]`."""
    n = len(specs.labels)
    out = np.empty((n, _SIZE, _SIZE, 3), np.uint8)
    step = _MOSAIC * _MOSAIC
    for start in range(0, n, step):
        stop = min(start + step, n)
        alpha = _coverage(specs, start, stop)[..., None]
        colors = specs.colors[start:stop, None, None, :].astype(np.float32)
        backgrounds = specs.backgrounds[start:stop, None, None, :].astype(np.float32)
        rgb = backgrounds + (colors - backgrounds) * alpha
        out[start:stop] = np.rint(rgb * 255).clip(0, 255).astype(np.uint8)
    return out


def _split_seed(split: str) -> int:
    return _SEED * 1000 + sorted(SHAPES32_SIZES).index(split)


def _content_hash(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the pixels and labels: caches keyed on it follow any change of the drawing or its libraries."""
    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.tobytes())
    return digest.hexdigest()[:16]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _make_split(split: str) -> datasets.Dataset:
    seed = _split_seed(split)
    specs = sample_specs(SHAPES32_SIZES[split], seed)
    images = draw_images(specs)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=SHAPES32_CLASSES)})
    encoded = pa.StructArray.from_arrays(
        [pa.array([_png(a) for a in images], pa.binary()), pa.nulls(len(images), pa.string())], names=["bytes", "path"]
    )
    table = pa.table({"image": encoded, "label": pa.array(specs.labels)}).cast(features.arrow_schema)
    return datasets.Dataset(
        datasets.table.InMemoryTable(table),
        info=datasets.DatasetInfo(features=features),
        split=datasets.NamedSplit(split),
        fingerprint=stable_hash("shapes32", split, _content_hash(images, specs.labels)),
    )


@functools.lru_cache(maxsize=1)
def load_shapes32() -> dict[str, datasets.Dataset]:
    """shapes32 train / test as `datasets.Dataset`s: `image` (PIL RGB 32x32) and `label` (ClassLabel)."""
    return {split: _make_split(split) for split in SHAPES32_SIZES}


def export_shapes32(directory: str | Path, limit: int | None = None) -> Path:
    """Write shapes32 as an image folder, `DIR/<split>/<class>/<index>.png` (at most `limit` images per
    split), which `data.dataset=DIR` reads back with the same splits and classes. DIR must be new or empty."""
    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; export shapes32 into a new or empty folder")
    for split, rows in load_shapes32().items():
        rows = rows if limit is None else rows.select(range(min(limit, len(rows))))
        for class_name in SHAPES32_CLASSES:
            (root / split / class_name).mkdir(parents=True, exist_ok=True)
        for index, row in enumerate(rows):
            row["image"].save(root / split / SHAPES32_CLASSES[row["label"]] / f"{index:05d}.png")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainkit.data.shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--export", metavar="DIR", required=True, help="write the images here as PNG files")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    args = parser.parse_args(argv)
    try:
        root = export_shapes32(args.export, args.limit)
    except FileExistsError as err:
        parser.error(str(err))
    print(f"wrote shapes32 to {root} (train/ and test/, one folder per class)")


if __name__ == "__main__":
    main()
