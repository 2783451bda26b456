"""SyntheticShapes: a procedurally drawn, download-free classification data set with a tunable shortcut.

Each image shows one or two foreground objects of its class (circle, square, triangle, ...; random
position, diameter 25-60 % of the image, colour and rotation) on a cluttered background: a base
colour with low-frequency blobs, optional stripes, pixel noise and small distractors (dots, strokes,
specks) that are never full-size class objects. Ground truth for explanation metrics comes with every
image: the salient-object ``object_mask`` (SGC's saliency mask, without a U²-Net) and per-object
``boxes`` (content-heatmap / pointing-game scores).

The shortcut ("cue") is the **background hue**: class ``c`` owns the hue ``c / num_classes`` of the
colour circle (± a small jitter). In the train split the cue equals the label with probability
``bias`` and is otherwise drawn uniformly from all classes (so the train agreement rate is
``bias + (1 - bias) / num_classes``); val and test cues are always uniform and independent of the
label. A model trained with a high bias can reach high train accuracy from the background alone and
fails on val; SGC/CGC consistency should move its Grad-CAM onto the object.

Determinism: item ``i`` of ``(seed, split)`` is a pure function of those three numbers, drawn from
``numpy.random.SeedSequence([seed, split_code, i, stream])``. Access order, worker processes and
instances do not matter. The scene layout is drawn in relative coordinates before anything
size-dependent, so the same item at another ``size`` shows the same scene (up to pixel noise).
Changing ``bias`` changes only the cue (background hue) of affected train items.

Class indices follow the alphabetical order of the class names, the order ``torchvision``'s
``ImageFolder`` assigns, so :meth:`SyntheticShapes.write_imagefolder` output reads back with the same
labels.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["DEFAULT_CLASSES", "SHAPES", "SPLITS", "SyntheticShapes", "write_imagefolder"]

# Shapes in the order they are taken for ``num_classes`` (the first n, then sorted by name).
SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "bowtie")
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTH = {"train": 2000, "val": 500, "test": 500}
DEFAULT_CLASSES = 5  # the first five shapes
MIN_SIZE = 16

# Scene parameters, as fractions of the image side unless stated.
OBJECT_DIAMETER = (0.25, 0.60)  # one object
PAIR_DIAMETER = (0.25, 0.40)  # each of two objects
PAIR_PROB = 0.25  # probability of drawing two objects of the class
PLACEMENT_TRIES = 20
HUE_JITTER = 0.15  # background hue jitter, in units of the hue spacing 1 / num_classes
DISTRACTORS = (4, 10)  # count range
DISTRACTOR_SIZE = (0.03, 0.12)  # extent of one distractor, well under the smallest object
STRIPE_PROB = 0.6
SUPERSAMPLE = 4  # objects are drawn at this factor and box-filtered down (anti-aliasing)
ALPHA_THRESHOLD = 0.5  # object mask = coverage >= this

# SeedSequence streams of one item.
_LAYOUT, _PIXELS = 0, 1


@dataclass
class _Item:
    image: np.ndarray  # [size, size, 3] uint8
    label: int
    cue: int
    boxes: np.ndarray  # [n, 4] float32 (xmin, ymin, xmax, ymax), max exclusive
    mask: np.ndarray  # [size, size] bool


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; all inputs in [0, 1] (broadcastable), output [..., 3] float32."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def _rotated(points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _shape_polygons(shape: str) -> list[tuple[list[tuple[float, float]], int]]:
    """Outline of ``shape`` in unit coordinates (fits the unit circle) as (polygon, fill) layers.

    Circles are 64-gons, so every shape is drawn the same way; fill 255 adds, fill 0 cuts a hole.
    """
    circle = _regular(64)
    if shape == "circle":
        return [(circle, 255)]
    if shape == "ring":
        return [(circle, 255), (_regular(64, 0.55), 0)]
    if shape == "square":
        return [(_regular(4, 1.0, math.pi / 4), 255)]
    if shape == "triangle":
        return [(_regular(3), 255)]
    if shape == "cross":
        a, w = 0.95, 0.3
        return [([(w, w), (a, w), (a, -w), (w, -w), (w, -a), (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w),
                  (-w, a), (w, a)], 255)]
    if shape == "star":
        outer, inner = _regular(5), _regular(5, 0.4, -math.pi / 2 + math.pi / 5)
        return [([p for pair in zip(outer, inner, strict=True) for p in pair], 255)]
    if shape == "crescent":
        cut = [(x * 0.85 + 0.45, y * 0.85) for x, y in circle]
        return [(circle, 255), (cut, 0)]
    if shape == "bowtie":
        return [([(-0.78, -0.62), (0.0, -0.07), (0.78, -0.62), (0.78, 0.62), (0.0, 0.07), (-0.78, 0.62)], 255)]
    raise ValueError(f"shape: unknown {shape!r}, expected one of {SHAPES}")


def _object_alpha(shape: str, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Coverage in [0, 1] of one object, ``[size, size]`` float32; centre/radius as fractions of ``size``."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon, fill in _shape_polygons(shape):
        pts = [(big * (cx + radius * x), big * (cy + radius * y)) for x, y in _rotated(polygon, angle)]
        draw.polygon(pts, fill=fill)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, pix: np.random.Generator, hue: float, size: int) -> np.ndarray:
    """Textured background of base ``hue``: ``[size, size, 3]`` float32 in [0, 1]."""
    sat = rng.uniform(0.45, 0.8)
    val = rng.uniform(0.45, 0.62)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    value = np.full((size, size), val, np.float32)
    hue_field = np.full((size, size), hue, np.float32)
    for _ in range(rng.integers(3, 7)):  # low-frequency blobs in value and (slightly) hue
        bx, by, sigma = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.25)
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sigma**2))
        value += rng.uniform(-0.12, 0.12) * blob
        hue_field += rng.uniform(-0.02, 0.02) * blob
    has_stripes = rng.random() < STRIPE_PROB
    theta, period = rng.uniform(0, math.pi), rng.uniform(0.08, 0.25)
    amp, phase = rng.uniform(0.05, 0.12), rng.uniform(0, 2 * math.pi)
    if has_stripes:
        value += amp * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
    value += pix.normal(0.0, 0.03, (size, size)).astype(np.float32)
    return _hsv_to_rgb(hue_field, np.float32(sat), np.clip(value, 0.0, 1.0))


def _draw_distractors(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Small dots, strokes and speck clusters in random colours, drawn onto ``image`` (uint8 HWC)."""
    size = image.shape[0]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1)):
        kind = rng.integers(3)
        extent = rng.uniform(*DISTRACTOR_SIZE)
        x, y = rng.uniform(0, 1), rng.uniform(0, 1)
        colour = tuple(int(c) for c in (255 * _hsv_to_rgb(np.float32(rng.random()), np.float32(rng.uniform(0, 1)),
                                                          np.float32(rng.uniform(0.1, 1.0)))).round())
        if kind == 0:  # dot
            r = 0.5 * extent * size
            draw.ellipse([x * size - r, y * size - r, x * size + r, y * size + r], fill=colour)
        elif kind == 1:  # thin stroke
            a = rng.uniform(0, math.pi)
            dx, dy = 0.5 * extent * size * math.cos(a), 0.5 * extent * size * math.sin(a)
            draw.line([x * size - dx, y * size - dy, x * size + dx, y * size + dy], fill=colour,
                      width=max(1, round(size / 48)))
        else:  # speck cluster
            for _ in range(rng.integers(3, 7)):
                px = (x + rng.uniform(-extent, extent) / 2) * size
                py = (y + rng.uniform(-extent, extent) / 2) * size
                draw.point((px, py), fill=colour)
    return np.asarray(canvas)


class SyntheticShapes(torch.utils.data.Dataset):
    """Shapes on cluttered, hue-cued backgrounds; ``(PIL RGB image [size x size], class index)`` items.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint random streams).
        size: image side in pixels (>= 16).
        length: number of items; default 2000 / 500 / 500 for train / val / test.
        num_classes: 2 to 8 shape classes, the first ``num_classes`` of :data:`SHAPES`.
        bias: probability that a train item's background hue is its own class's hue (otherwise uniform).
            Ignored for val/test, which are always unbiased.
        seed: data-set seed; items are a pure function of ``(seed, split, index)``.

    Labels are balanced: item ``i`` has class ``i % num_classes``.
    """

    def __init__(self, split: str = "train", size: int = 64, length: int | None = None, num_classes: int = DEFAULT_CLASSES,
                 bias: float = 0.0, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
        if not isinstance(size, int) or size < MIN_SIZE:
            raise ValueError(f"size: expected an int >= {MIN_SIZE}, got {size!r}")
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes: expected 2..{len(SHAPES)}, got {num_classes}")
        if not 0.0 <= bias <= 1.0:
            raise ValueError(f"bias: expected a probability in [0, 1], got {bias}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        length = DEFAULT_LENGTH[split] if length is None else length
        if length < 0:
            raise ValueError(f"length: expected >= 0, got {length}")
        self.split, self.size, self.length, self.num_classes = split, size, int(length), num_classes
        self.bias, self.seed = float(bias), seed
        self.classes: list[str] = sorted(SHAPES[:num_classes])
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self._cache: OrderedDict[int, _Item] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        item = self._item(i)
        return Image.fromarray(item.image, mode="RGB"), item.label

    @property
    def targets(self) -> list[int]:
        """Class index of every item (like ``ImageFolder.targets``)."""
        return [i % self.num_classes for i in range(self.length)]

    def image_id(self, i: int) -> str:
        """Stable unique key of item ``i``."""
        i = self._index(i)
        return f"synthetic/{self.split}/{self.seed}/{self.size}/{i}"

    def boxes(self, i: int) -> torch.Tensor:
        """``[n, 4]`` float32 ``(xmin, ymin, xmax, ymax)`` pixel boxes (max exclusive) of the class objects."""
        return torch.from_numpy(self._item(i).boxes.copy())

    def object_mask(self, i: int) -> np.ndarray:
        """``[size, size]`` bool ground-truth salient-object mask (union of the class objects)."""
        return self._item(i).mask.copy()

    def cue(self, i: int) -> int:
        """Class whose hue the background of item ``i`` carries."""
        return self._item(i).cue

    def write_imagefolder(self, root: str | Path) -> Path:
        """Write this split as an ImageFolder tree; returns ``<root>/<split>``.

        Layout::

            <root>/<split>/<class>/<NNNNNN>.png            the images (class index = sorted class name)
            <root>/<split>/boxes.json                      {"<class>/<NNNNNN>.png": [[xmin, ymin, xmax, ymax], ...]}
            <root>/<split>/meta.json                       data-set parameters, classes, and per-image cue
            <root>/object_masks/<split>/<class>/<NNNNNN>.png  object masks, mode "L", 0 or 255

        Box coordinates are pixels with exclusive max, as :meth:`boxes`. Masks live outside
        ``<root>/<split>`` so that ImageFolder does not take them for a class.
        """
        root = Path(root)
        split_dir, mask_dir = root / self.split, root / "object_masks" / self.split
        for name in self.classes:
            (split_dir / name).mkdir(parents=True, exist_ok=True)
            (mask_dir / name).mkdir(parents=True, exist_ok=True)
        boxes, cues = {}, {}
        width = max(6, len(str(max(self.length - 1, 0))))
        for i in range(self.length):
            item = self._item(i)
            rel = f"{self.classes[item.label]}/{i:0{width}d}.png"
            Image.fromarray(item.image, mode="RGB").save(split_dir / rel)
            Image.fromarray(item.mask.astype(np.uint8) * 255, mode="L").save(mask_dir / rel)
            boxes[rel] = item.boxes.tolist()
            cues[rel] = item.cue
        (split_dir / "boxes.json").write_text(json.dumps(boxes, indent=0))
        meta = {"split": self.split, "size": self.size, "length": self.length, "num_classes": self.num_classes,
                "bias": self.bias, "seed": self.seed, "classes": self.classes, "cue": cues}
        (split_dir / "meta.json").write_text(json.dumps(meta, indent=0))
        return split_dir

    # -- drawing -------------------------------------------------------------------------------------

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for SyntheticShapes of length {self.length}")
        return i

    def _item(self, i: int) -> _Item:
        i = self._index(i)
        item = self._cache.get(i)
        if item is None:
            item = self._draw(i)
            self._cache[i] = item
            if len(self._cache) > 16:
                self._cache.popitem(last=False)
        return item

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS[self.split], i, stream]))

    def _draw(self, i: int) -> _Item:
        rng, pix = self._rng(i, _LAYOUT), self._rng(i, _PIXELS)
        size, C = self.size, self.num_classes
        label = i % C
        # Cue: both numbers are always drawn, so bias changes only the cue, never the rest of the scene.
        u, uniform_cue = rng.random(), int(rng.integers(C))
        cue = label if (self.split == "train" and u < self.bias) else uniform_cue
        hue = (cue + rng.uniform(-HUE_JITTER, HUE_JITTER)) / C

        # Layout of the class objects (relative coordinates): one, or two that do not overlap.
        two = rng.random() < PAIR_PROB
        lo, hi = PAIR_DIAMETER if two else OBJECT_DIAMETER
        objects = []
        for _ in range(2 if two else 1):
            for _ in range(PLACEMENT_TRIES):
                r = rng.uniform(lo, hi) / 2
                cx, cy = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
                if all(math.hypot(cx - ox, cy - oy) > r + orad for ox, oy, orad, _ in objects):
                    break
            else:
                continue
            objects.append((cx, cy, r, rng.uniform(0, 2 * math.pi)))
        colours = []
        for _ in objects:  # object colour: random hue, strong lightness contrast with the background
            bright = rng.random() < 0.5
            s = rng.uniform(0.0, 0.6) if bright else rng.uniform(0.3, 1.0)
            v = rng.uniform(0.85, 1.0) if bright else rng.uniform(0.03, 0.16)
            colours.append(_hsv_to_rgb(np.float32(rng.random()), np.float32(s), np.float32(v)))

        background = _background(rng, pix, hue, size)
        image = _draw_distractors(rng, (background * 255).round().astype(np.uint8)).astype(np.float32) / 255

        shape = self.classes[label]
        mask = np.zeros((size, size), bool)
        boxes = []
        for (cx, cy, r, angle), colour in zip(objects, colours, strict=True):
            alpha = _object_alpha(shape, cx, cy, r, angle, size)
            image = image * (1 - alpha[..., None]) + colour * alpha[..., None]
            own = alpha >= ALPHA_THRESHOLD
            ys, xs = np.nonzero(own)
            if len(xs) == 0:
                continue
            mask |= own
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        image = image + pix.normal(0.0, rng.uniform(0.01, 0.04), image.shape).astype(np.float32)
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return _Item(image, label, cue, np.asarray(boxes, np.float32).reshape(-1, 4), mask)


def write_imagefolder(root: str | Path, split: str = "train", **kwargs) -> Path:
    """``SyntheticShapes(split, **kwargs).write_imagefolder(root)``; returns ``<root>/<split>``."""
    return SyntheticShapes(split, **kwargs).write_imagefolder(root)
