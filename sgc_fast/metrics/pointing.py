"""Pointing game (TorchRay's deterministic one) and the stochastic pointing game (upstream §7.2).

Hit rule (both): a pixel hits iff some ground-truth pixel (union of the boxes) lies at Euclidean
distance **strictly below** ``tolerance`` pixels, i.e. ``d^2 < tolerance^2``. ``d^2`` is exact: the
closed-form distance to an axis-aligned integer rectangle of pixels, minimised over boxes
(:func:`sgc_fast.metrics.boxes.box_sq_distance`) and evaluated only at the query pixels, so there is
no per-sample distance grid (the research script built one ``H x W`` grid per sample).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .boxes import _check_boxes, _check_maps, box_pixel_ranges, box_sq_distance

__all__ = ["pointing_game", "stochastic_pointing_game"]


def _hits(maps: Tensor, boxes: Sequence[Any], flat_idx: Tensor, tolerance: float) -> Tensor:
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or tolerance != tolerance:
        raise ValueError(f"tolerance: expected a number of pixels, got {tolerance!r}")
    _, h, w = maps.shape
    ranges = box_pixel_ranges(boxes, h, w, maps.device)
    d2 = box_sq_distance(ranges, flat_idx // w, flat_idx % w)
    # d2 is an exact integer (<= 2**63); compare in float64 (exact for d2 < 2**53, i.e. any real image)
    return d2.to(torch.float64) < float(tolerance) ** 2


def pointing_game(maps: Tensor, boxes: Sequence[Any], tolerance: float = 15) -> Tensor:
    """Deterministic pointing game: does each map's maximum point at its ground truth?

    ``maps``: ``[B, H, W]``; ``boxes``: ``B`` entries ``[n_i, 4]`` (max exclusive). The pointed pixel is
    the maximum, the **first** in row-major order on ties (``torch.argmax`` semantics; a constant map
    points at ``(0, 0)``). Returns ``[B]`` bool: hit iff its distance to a box pixel is ``< tolerance``
    (``tolerance <= 0`` never hits; an image without boxes never hits).
    """
    _check_maps(maps)
    _check_boxes(boxes, maps.shape[0])
    idx = maps.flatten(1).argmax(dim=1, keepdim=True)  # [B, 1]
    return _hits(maps, boxes, idx, tolerance)[:, 0]


def stochastic_pointing_game(
    maps: Tensor,
    boxes: Sequence[Any],
    samples: int = 100,
    tolerance: float = 15,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Stochastic pointing game: fraction of sampled pixels that hit the ground truth.

    ``samples`` pixels per map are drawn i.i.d. (with replacement) from the map normalised to a
    categorical distribution over its ``H*W`` pixels (``torch.multinomial``; pass a ``generator`` on
    ``maps.device`` for determinism). ``maps``: ``[B, H, W]`` non-negative; ``boxes``: ``B`` entries
    ``[n_i, 4]`` (max exclusive). Returns ``[B]`` float in ``[0, 1]`` (the research script reports
    ``x100``); ``NaN`` for a map with zero mass, which the research script skips (use
    ``torch.nanmean``). Skipping images whose target boxes are all ``difficult`` is the caller's
    (``read_voc_boxes(..., skip_difficult=True)`` returns no box for them).
    """
    _check_maps(maps)
    _check_boxes(boxes, maps.shape[0])
    if samples < 1:
        raise ValueError(f"samples: expected >= 1, got {samples}")
    acc = torch.float64 if maps.dtype == torch.float64 else torch.float32
    p = maps.flatten(1).to(acc)
    valid = p.sum(dim=1) > 0
    p = torch.where(valid[:, None], p, 1.0)  # any valid row for multinomial; result masked below
    idx = torch.multinomial(p, samples, replacement=True, generator=generator)  # [B, S]
    frac = _hits(maps, boxes, idx, tolerance).to(acc).mean(dim=1)
    return torch.where(valid, frac, torch.nan)
