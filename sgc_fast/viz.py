"""Heatmap overlays and grids, drawn with NumPy and PIL only (no matplotlib).

- :func:`jet`: a jet-like colormap, ``[...] float in [0, 1] -> [..., 3] uint8``.
- :func:`overlay`: an image with a CAM blended on top, ``[H, W, 3] uint8``.
- :func:`save_grid`: rows = images; columns = the image, then one CAM overlay per model; column
  titles in PIL's default font; saved as PNG. Layout: see :func:`grid_size`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_write

__all__ = ["GRID_CAPTION", "GRID_PAD", "GRID_TITLE", "grid_size", "jet", "overlay", "save_grid", "to_uint8_image"]

GRID_PAD = 2  # pixels between (and around) cells
GRID_TITLE = 14  # height of the title row
GRID_CAPTION = 24  # height of the two caption lines under each cell (when there are captions)
CELL_MIN, CELL_MAX = 96, 256  # default cell side: the first image's longer side, clamped to this range


def jet(x: np.ndarray) -> np.ndarray:
    """Jet-like colormap (dark blue -> blue -> cyan -> yellow -> red -> dark red) of values in ``[0, 1]``."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    rgb = np.stack([np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def to_uint8_image(image: Any) -> np.ndarray:
    """PIL image, ``[3, H, W]`` tensor/array (float in [0, 1] or uint8), or ``[H, W, 3]`` array -> ``[H, W, 3] uint8``."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    elif a.ndim == 3 and a.shape[0] in (1, 3) and (isinstance(image, torch.Tensor) or a.shape[-1] not in (1, 3)):
        a = np.moveaxis(a, 0, -1)  # [C, H, W] (always for tensors)
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"image: expected [3, H, W], [H, W, 3] or a PIL image, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def _resize_cam(cam: np.ndarray, h: int, w: int) -> np.ndarray:
    if cam.shape == (h, w):
        return cam
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(image: Any, cam: Any, alpha: float = 0.5) -> np.ndarray:
    """Blend ``jet(cam / max(cam))`` over ``image``: ``(1 - alpha) * image + alpha * colours``.

    ``image``: PIL image or ``[3, H, W]`` (float in [0, 1] or uint8; not ImageNet-normalised).
    ``cam``: ``[H, W]`` (resized bilinearly if its size differs); negative values count as 0; an
    all-zero map shows as the colormap's minimum. Returns ``[H, W, 3] uint8``.
    """
    img = to_uint8_image(image)
    c = cam.detach().float().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam, dtype=np.float32)
    if c.ndim != 2:
        raise ValueError(f"cam: expected [H, W], got shape {c.shape}")
    c = np.nan_to_num(np.maximum(_resize_cam(c, *img.shape[:2]), 0.0))
    peak = float(c.max())
    c = c / peak if peak > 0 else c
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * jet(c).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def grid_size(rows: int, models: int, cell: int, captions: bool = False) -> tuple[int, int]:
    """``(width, height)`` of the PNG :func:`save_grid` writes for ``rows`` images and ``models`` models
    (``captions``: a text line under every cell)."""
    cols = models + 1
    row = cell + (GRID_CAPTION if captions else 0)
    return cols * cell + (cols + 1) * GRID_PAD, GRID_TITLE + rows * row + (rows + 1) * GRID_PAD


def _fit(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_grid(path: str | os.PathLike, images: Sequence[Any], cams_per_model: Sequence[Any],
              names: Sequence[str], cell: int | None = None, alpha: float = 0.5,
              captions: Sequence[Sequence[str]] | None = None, row_labels: Sequence[str] | None = None
              ) -> tuple[int, int]:
    """Write a PNG grid: one row per image, columns = the image, then each model's CAM overlay.

    ``images``: ``N`` images (see :func:`overlay`); ``cams_per_model``: one ``[N, H, W]`` (tensor, array,
    or list of ``[H, W]``) per model; ``names``: the models' column titles. Every cell is resized
    (bilinear) to ``cell x cell`` (default: the first image's longer side clamped to [96, 256]).
    ``captions``: per model, ``N`` texts written under its cells; ``row_labels``: ``N`` texts under the images
    (each at most two lines, split at ``"\\n"``).
    Returns the PNG's ``(width, height)`` (= :func:`grid_size`).
    """
    if len(cams_per_model) != len(names):
        raise ValueError(f"names: expected one per model ({len(cams_per_model)}), got {len(names)}")
    n = len(images)
    for k, cams in enumerate(cams_per_model):
        if len(cams) != n:
            raise ValueError(f"cams_per_model[{k}]: expected {n} maps (one per image), got {len(cams)}")
    if captions is not None and (len(captions) != len(names) or any(len(c) != n for c in captions)):
        raise ValueError(f"captions: expected {len(names)} lists (one per model) of {n} lines")
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels: expected {n} lines (one per image), got {len(row_labels)}")
    if n == 0:
        raise ValueError("images: need at least one image")
    first = to_uint8_image(images[0])
    if cell is None:
        cell = int(min(max(max(first.shape[:2]), CELL_MIN), CELL_MAX))
    texts = captions is not None or row_labels is not None
    width, height = grid_size(n, len(names), cell, captions=texts)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for j, title in enumerate(["image", *names]):
        x = GRID_PAD + j * (cell + GRID_PAD)
        draw.text((x + 1, 1), _fit(str(title), draw, font, cell - 2), fill=(0, 0, 0), font=font)
    row = cell + (GRID_CAPTION if texts else 0)
    for i in range(n):
        img = to_uint8_image(images[i])
        y = GRID_TITLE + GRID_PAD + i * (row + GRID_PAD)
        tiles = [img] + [overlay(img, cams[i], alpha) for cams in cams_per_model]
        lines = [row_labels[i] if row_labels is not None else ""]
        lines += [c[i] for c in captions] if captions is not None else [""] * len(cams_per_model)
        for j, tile in enumerate(tiles):
            pil = Image.fromarray(tile).resize((cell, cell), Image.BILINEAR)
            x = GRID_PAD + j * (cell + GRID_PAD)
            canvas.paste(pil, (x, y))
            for k, text in enumerate(str(lines[j]).split("\n")[:2] if j < len(lines) else []):
                draw.text((x + 1, y + cell + 11 * k), _fit(text, draw, font, cell - 2), fill=(0, 0, 0), font=font)
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: canvas.save(f, format="PNG"))
    return width, height
