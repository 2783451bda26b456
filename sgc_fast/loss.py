"""Drop-in losses: the contrastive term of SGC and CGC, and the MSE ("L2") consistency baseline.

Each returns only its own term; a training step adds the cross-entropies and ``lambda * term``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops

__all__ = ["SGCLoss", "CGCLoss", "L2ConsistencyLoss"]


class _ContrastLoss(nn.Module):
    def __init__(self, temperature: float = 0.5, kind: str = "hires", eps: float = 1e-8,
                 backend: str | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
        if kind not in ("hires", "grad"):
            raise ValueError(f"kind: expected 'hires' or 'grad', got {kind!r}")
        self.temperature, self.kind, self.eps, self.backend = float(temperature), kind, float(eps), backend

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, kind={self.kind!r}, eps={self.eps}, backend={self.backend!r}"


class SGCLoss(_ContrastLoss):
    """Saliency-guided contrastive term: the masked view's CAM times its saliency mask against the
    original view's CAM, other samples' masked CAMs as negatives.

    ``forward(feats_orig, grads_orig, feats_aug, grads_aug, mask)`` with feats/grads ``[B, K, h, w]``
    (grads e.g. from :func:`sgc_fast.head_grads`) and ``mask [B, H, W]``; the map size is the mask's.
    Returns a scalar.
    """

    def forward(self, feats_orig, grads_orig, feats_aug, grads_aug, mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 3:
            raise ValueError(f"mask: expected a [B, H, W] tensor, got {ops._describe(mask)}")
        return ops.saliency_contrast_loss(
            feats_orig, grads_orig, feats_aug, grads_aug, kind=self.kind, mask=mask, size=tuple(mask.shape[1:]),
            temperature=self.temperature, eps=self.eps, backend=self.backend,
        )


class CGCLoss(_ContrastLoss):
    """Contrastive Grad-CAM consistency term: the original view's CAM warped by the crop box and flip
    against the crop view's CAM.

    ``forward(feats_orig, grads_orig, feats_aug, grads_aug, crop, flip)`` with ``crop [B, 4]`` integer
    ``(top, left, height, width)`` in image pixels and ``flip [B]`` bool; ``size`` (constructor) is the
    image size ``(H, W)``. Returns a scalar.
    """

    def __init__(self, size: tuple[int, int] = (224, 224), **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = (int(size[0]), int(size[1]))

    def forward(self, feats_orig, grads_orig, feats_aug, grads_aug, crop: torch.Tensor,
                flip: torch.Tensor) -> torch.Tensor:
        return ops.saliency_contrast_loss(
            feats_orig, grads_orig, feats_aug, grads_aug, kind=self.kind, crop=crop, flip=flip, size=self.size,
            temperature=self.temperature, eps=self.eps, backend=self.backend,
        )


class L2ConsistencyLoss(nn.Module):
    """MSE between the L2-normalised maps of the two views (the research code's no-contrast baseline):
    ``mean over B*H*W of (a_hat - p_hat)^2``. Pass ``mask`` (SGC frame), ``crop`` + ``flip`` (CGC
    frame) or both.

    Computed without full-size maps: ``|a_hat - p_hat|^2 = |a_hat|^2 + |p_hat|^2 - 2 a_hat.p_hat``, where
    ``|p_hat| = 1`` (eps > 0 keeps every map strictly positive) and ``|a_hat|^2`` is 1, or 0 for an
    empty mask; both dot products come from :func:`sgc_fast.contrast_logits`.
    """

    def __init__(self, size: tuple[int, int] = (224, 224), kind: str = "hires", eps: float = 1e-8,
                 backend: str | None = None) -> None:
        super().__init__()
        self.size, self.kind, self.eps, self.backend = (int(size[0]), int(size[1])), kind, float(eps), backend

    def forward(self, feats_orig, grads_orig, feats_aug, grads_aug, mask=None, crop=None, flip=None):
        size = tuple(mask.shape[1:]) if mask is not None else self.size
        cam_orig = ops.batched_cam(feats_orig, grads_orig, self.kind, backend=self.backend)
        cam_aug = ops.batched_cam(feats_aug, grads_aug, self.kind, backend=self.backend)
        # Separate negatives = the batch itself: column 1 + b holds a_hat_b . a_hat_b = |a_hat_b|^2.
        logits = ops.contrast_logits(
            cam_orig, cam_aug, mask=mask, crop=crop, flip=flip, size=size, temperature=1.0, eps=self.eps,
            neg_cam=cam_aug, neg_mask=mask, backend=self.backend,
        )
        B = logits.shape[0]
        idx = torch.arange(B, device=logits.device)
        sq_a = logits[idx, 1 + idx]
        return (sq_a + 1.0 - 2.0 * logits[:, 0]).sum() / (B * size[0] * size[1])
