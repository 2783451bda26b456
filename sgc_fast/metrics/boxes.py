"""Ground-truth boxes: the pixel convention, masks, exact distances, and the annotation readers.

Convention (used by every metric in this package)
-------------------------------------------------
A box is ``(xmin, ymin, xmax, ymax)`` in pixel coordinates with the **max exclusive**: the pixel in
row ``r``, column ``c`` (0-based integers) belongs to the box iff ``xmin <= c < xmax`` and
``ymin <= r < ymax``. For integer boxes that is columns ``xmin .. xmax-1`` and rows
``ymin .. ymax-1``; fractional coordinates are allowed and mean the same inequalities, i.e. columns
``ceil(xmin) .. ceil(xmax)-1``. Boxes are clipped to the image; a box with no pixel inside the image
is ignored. The ground truth of one image is the **union** of its boxes (overlaps counted once).

The boxes of a batch are a sequence of ``B`` tensors (or arrays / nested lists) of shape ``[n_i, 4]``;
``n_i`` may differ between images and may be 0 (empty ground truth).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "box_mask",
    "box_pixel_ranges",
    "box_sq_distance",
    "read_cub_boxes",
    "read_voc_boxes",
    "synthetic_boxes",
]


def box_pixel_ranges(boxes: Sequence[Any], height: int, width: int, device: torch.device | str) -> Tensor:
    """Inclusive integer pixel ranges of the boxes, padded to one tensor.

    Returns ``[B, N, 4]`` int64 ``(col_lo, row_lo, col_hi, row_hi)``, inclusive, clipped to the
    ``height x width`` image, where ``N = max n_i``. Padding and boxes with no pixel in the image have
    ``lo > hi`` (empty).
    """
    rows = []
    for i, b in enumerate(boxes):
        t = torch.as_tensor(b, dtype=torch.float64).cpu()
        if t.numel() == 0:
            t = t.reshape(0, 4)
        elif t.shape == (4,):
            t = t[None]
        if t.dim() != 2 or t.shape[1] != 4:
            raise ValueError(f"boxes[{i}]: expected shape [n, 4], got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"boxes[{i}]: holds NaN or infinite coordinates")
        lo = torch.ceil(t[:, :2])  # first column / row inside
        hi = torch.ceil(t[:, 2:]) - 1  # last column / row inside
        lo = torch.maximum(lo, torch.zeros(()))
        hi = torch.minimum(hi, torch.tensor([width - 1, height - 1], dtype=torch.float64))
        rows.append(torch.cat([lo, hi], dim=1).to(torch.int64))
    n = max((r.shape[0] for r in rows), default=0)
    out = torch.empty(len(rows), max(n, 1), 4, dtype=torch.int64)
    out[..., :2] = 1  # empty padding: lo = 1 > hi = 0
    out[..., 2:] = 0
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out.to(device)


def _check_maps(maps: Tensor) -> None:
    """``[B, H, W]`` floating maps with finite values (a NaN would make every score of its image meaningless)."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps: expected a [B, H, W] tensor, got {type(maps).__name__}")
    if maps.dim() != 3:
        raise ValueError(f"maps: expected [B, H, W], got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise ValueError(f"maps: expected a floating dtype, got {maps.dtype}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps: holds NaN or infinite values")


def _check_boxes(boxes: Sequence[Any], batch: int) -> None:
    if len(boxes) != batch:
        raise ValueError(f"boxes: expected one [n, 4] entry per map ({batch}), got {len(boxes)}")


def box_mask(boxes: Sequence[Any], height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """``[B, height, width]`` bool: the union of each image's boxes (see the module convention)."""
    r = box_pixel_ranges(boxes, height, width, device)
    cols = torch.arange(width, device=device)
    rows = torch.arange(height, device=device)
    in_x = (cols >= r[..., 0, None]) & (cols <= r[..., 2, None])  # [B, N, W]
    in_y = (rows >= r[..., 1, None]) & (rows <= r[..., 3, None])  # [B, N, H]
    # count of boxes covering each pixel; exact in float32 (N << 2**24)
    return torch.einsum("bnh,bnw->bhw", in_y.float(), in_x.float()) > 0


def box_sq_distance(ranges: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Exact squared Euclidean distance from pixels to the nearest ground-truth pixel.

    ``ranges``: ``[B, N, 4]`` from :func:`box_pixel_ranges`; ``rows``, ``cols``: ``[B, S]`` int64 pixel
    coordinates. Returns ``[B, S]`` int64 (``0`` inside a box). An image with no box pixel gets
    ``torch.iinfo(int64).max``.

    The box pixels form an integer rectangle, so the nearest one is the coordinate-wise clamp of the
    query: ``dx = max(lo_c - c, 0, c - hi_c)`` and likewise ``dy``; the distance to the union is the
    minimum over boxes. This is the exact Euclidean distance transform of the mask, evaluated only at
    the query pixels, in integer arithmetic (no grid, no rounding).
    """
    c = cols[:, None, :]
    r = rows[:, None, :]
    zero = torch.zeros((), dtype=torch.int64, device=cols.device)
    dx = torch.maximum(torch.maximum(ranges[..., 0, None] - c, c - ranges[..., 2, None]), zero)
    dy = torch.maximum(torch.maximum(ranges[..., 1, None] - r, r - ranges[..., 3, None]), zero)
    d2 = dx * dx + dy * dy  # [B, N, S]
    empty = (ranges[..., 0] > ranges[..., 2]) | (ranges[..., 1] > ranges[..., 3])  # [B, N]
    d2 = d2.masked_fill(empty[..., None], torch.iinfo(torch.int64).max)
    return d2.amin(dim=1)


# ----------------------------------------------------------------------------------------- readers


def read_voc_boxes(
    xml_path: str | Path, class_name: str | None = None, *, skip_difficult: bool = False
) -> tuple[Tensor, list[str], tuple[int, int]]:
    """Read a Pascal-VOC-style XML (ImageNet val / CUB annotations as the research code uses them).

    Returns ``(boxes, names, size)``: ``boxes`` ``[n, 4]`` float32 in this package's convention,
    ``names`` the ``n`` object names, ``size`` = ``(width, height)`` from ``<size>``.

    VOC coordinates are 1-based and inclusive, so the conversion is ``(xmin - 1, ymin - 1, xmax, ymax)``:
    exactly the pixels rows ``ymin-1 .. ymax-1``, columns ``xmin-1 .. xmax-1`` of the research mask.
    ``class_name`` keeps only objects of that name (the research scripts use the name of the *first*
    object: ``read_voc_boxes(p, read_voc_boxes(p)[1][0])``). ``skip_difficult`` drops objects with
    ``<difficult>1</difficult>`` (the stochastic pointing game skips images where this leaves nothing).
    """
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: no <size> element")
    wh = (int(float(size.findtext("width", "0"))), int(float(size.findtext("height", "0"))))
    boxes: list[list[float]] = []
    names: list[str] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if class_name is not None and name != class_name:
            continue
        if skip_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{xml_path}: object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x0 - 1, y0 - 1, x1, y1])
        names.append(name)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), names, wh


def read_cub_boxes(bounding_boxes_txt: str | Path) -> dict[int, Tensor]:
    """Read CUB-200-2011's ``bounding_boxes.txt``: lines ``<image_id> <x> <y> <width> <height>``.

    Returns ``{image_id: [1, 4] float32}`` with ``(xmin, ymin, xmax, ymax) = (x, y, x + width, y + height)``,
    i.e. ``(x, y)`` is taken as the 0-based top-left pixel and ``width``/``height`` as pixel counts.
    (CUB does not state its origin; this choice covers exactly ``width x height`` pixels.)
    """
    out: dict[int, Tensor] = {}
    for k, line in enumerate(Path(bounding_boxes_txt).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{bounding_boxes_txt}:{k}: expected '<image_id> <x> <y> <width> <height>', got {line!r}")
        x, y, w, h = (float(p) for p in parts[1:])
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise ValueError(f"{bounding_boxes_txt}:{k}: non-finite box {line!r}")
        out[int(parts[0])] = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
    return out


def synthetic_boxes(dataset: Any, i: int) -> Tensor:
    """Boxes of item ``i`` of :class:`sgc_fast.data.SyntheticShapes` (already in this convention): ``[n, 4]``."""
    return dataset.boxes(i)
