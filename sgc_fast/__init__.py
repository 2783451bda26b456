"""sgc_fast: fused kernels for training classifiers with consistent Grad-CAM explanations (SGC, CGC).

Public API::

    batched_cam(feats, grads, kind="hires", backend=None) -> [B, h, w]
    contrast_logits(cam_orig, cam_aug, *, mask=None, crop=None, flip=None, size=(224, 224),
                    temperature=0.5, eps=1e-8, neg_cam=None, neg_mask=None, self_index=None,
                    backend=None) -> [B, B] or [B, 1 + N]
    saliency_contrast_loss(feats_orig, grads_orig, feats_aug, grads_aug, *, kind, mask, crop, flip,
                           size, temperature, eps, backend) -> scalar
    SGCLoss, CGCLoss, L2ConsistencyLoss
    target_grads(logits, feats, targets, create_graph=True), head_grads(weight, feats, targets)
    capture_feats(model, layer)
    CAM(model, target_layer, kind="hires")(images, targets=None, size=None, create_graph=False) -> [B, h, w]
    explain_backends(device), explain_glue(device), glue_kind(device)
"""

from . import reference
from .cam import Captured, capture_feats, head_grads, target_grads
from .extractor import CAM
from .fused import explain_glue, glue_kind
from .loss import CGCLoss, L2ConsistencyLoss, SGCLoss
from .ops import (
    BACKENDS,
    available_backends,
    batched_cam,
    contrast_logits,
    explain_backends,
    resolve_backend,
    saliency_contrast_loss,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CAM",
    "Captured",
    "CGCLoss",
    "L2ConsistencyLoss",
    "SGCLoss",
    "available_backends",
    "batched_cam",
    "capture_feats",
    "contrast_logits",
    "explain_backends",
    "explain_glue",
    "glue_kind",
    "head_grads",
    "reference",
    "resolve_backend",
    "saliency_contrast_loss",
    "target_grads",
]
