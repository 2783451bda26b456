"""Content heatmap ("CH", energy inside the bounding boxes; upstream §7.1).

Score of one map = the share of its mass that falls on ground-truth pixels (the union of the boxes):
``sum(map * mask) / sum(map)``. This equals the research scripts' step 6 after their step 4
(divide the resized map by its sum). Their map construction (ReLU, feature-resolution normalisation,
resize to the image size) is the caller's business; this function receives the final map.

Zero-mass maps: the research code skips them (and averages over the rest). Here they score ``NaN``,
so ``torch.nanmean(scores)`` is exactly the research aggregate (before its ``x100``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .boxes import _check_boxes, _check_maps, box_mask

__all__ = ["content_heatmap"]


def content_heatmap(maps: Tensor, boxes: Sequence[Any]) -> Tensor:
    """Share of each map's mass inside the union of its boxes.

    ``maps``: ``[B, H, W]`` non-negative floating saliency maps at image resolution (negative values
    are not checked for; they would count with their sign). ``boxes``: ``B`` entries of shape
    ``[n_i, 4]`` ``(xmin, ymin, xmax, ymax)``, max exclusive (see :mod:`sgc_fast.metrics.boxes`).

    Returns ``[B]`` in ``[0, 1]`` (float32, or float64 for float64 maps), computed on ``maps.device``;
    ``NaN`` where a map sums to ``<= 0`` (use ``torch.nanmean``); ``0`` for an image without boxes.
    """
    _check_maps(maps)
    _check_boxes(boxes, maps.shape[0])
    acc = torch.float64 if maps.dtype == torch.float64 else torch.float32
    m = maps.to(acc)
    mask = box_mask(boxes, maps.shape[1], maps.shape[2], maps.device)
    total = m.sum(dim=(1, 2))
    inside = torch.where(mask, m, 0).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total, torch.nan)
