"""Explanation metrics of the CGC/SGC papers, batched on the maps' device (upstream spec §7).

- :func:`content_heatmap`: share of a map's mass inside the ground-truth boxes (CH).
- :func:`pointing_game` / :func:`stochastic_pointing_game`: hit if the map's maximum / each sampled
  pixel lies within ``tolerance`` px (strict, exact Euclidean distance) of a box pixel.
- :func:`insertion_auc` / :func:`deletion_auc` (and :func:`causal_curve`): RISE causal metrics.
- Box readers: :func:`read_voc_boxes`, :func:`read_cub_boxes`, :func:`synthetic_boxes`.

Box convention everywhere: ``(xmin, ymin, xmax, ymax)`` pixels, max exclusive (module
:mod:`sgc_fast.metrics.boxes`). Research bugs not reproduced: ties are ordered (first max, stable
pixel ranking), the model is scored in eval mode without touching BatchNorm statistics, zero-mass
maps are ``NaN`` rather than silently mixed in, no per-sample distance grids.
"""

from .boxes import box_mask, box_sq_distance, read_cub_boxes, read_voc_boxes, synthetic_boxes
from .causal import blur, blur_kernel, causal_curve, curve_auc, deletion_auc, insertion_auc
from .energy import content_heatmap
from .pointing import pointing_game, stochastic_pointing_game

__all__ = [
    "blur",
    "blur_kernel",
    "box_mask",
    "box_sq_distance",
    "causal_curve",
    "content_heatmap",
    "curve_auc",
    "deletion_auc",
    "insertion_auc",
    "pointing_game",
    "read_cub_boxes",
    "read_voc_boxes",
    "stochastic_pointing_game",
    "synthetic_boxes",
]
