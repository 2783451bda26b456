"""Drop-in losses: the contrastive term of SGC and CGC, and the MSE ("L2") consistency baseline.

Each returns only its own term; a training step adds the cross-entropies and ``lambda * term``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .distributed import NEGATIVES, gather_negatives, group_size

__all__ = ["SGCLoss", "CGCLoss", "L2ConsistencyLoss"]


class _ContrastLoss(nn.Module):
    """Shared by :class:`SGCLoss` and :class:`CGCLoss`. ``negatives``: ``"local"`` (the other samples of the
    batch given) or ``"global"`` (the batches of every process of ``group``, gathered with autograd; the same
    as ``"local"`` without an initialised process group); ``chunk=n``: negatives only within consecutive
    chunks of ``n`` rows (the research code's per-GPU negatives under ``nn.DataParallel``, on one device).
    See :mod:`sgc_fast.distributed`."""

    def __init__(self, temperature: float = 0.5, kind: str = "hires", eps: float = 1e-8,
                 backend: str | None = None, *, negatives: str = "local", chunk: int | None = None,
                 group=None) -> None:
        super().__init__()
        temperature = ops.check_positive(temperature, "temperature")
        eps = ops.check_positive(eps, "eps", ops.EPS_MAX)
        if kind not in ("hires", "grad"):
            raise ValueError(f"kind: expected 'hires' or 'grad', got {kind!r}")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives: expected one of {NEGATIVES}, got {negatives!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 2):
            raise ValueError(f"chunk: expected an integer >= 2 (a chunk of 1 has no negatives) or None, got {chunk!r}")
        if chunk is not None and negatives == "global":
            raise ValueError("chunk: per-chunk negatives need negatives='local', got negatives='global'")
        self.temperature, self.kind, self.eps, self.backend = float(temperature), kind, float(eps), backend
        self.negatives, self.chunk, self.group = negatives, chunk, group

    def extra_repr(self) -> str:
        extra = f", negatives={self.negatives!r}" if self.negatives != "local" else ""
        extra += f", chunk={self.chunk}" if self.chunk is not None else ""
        return f"temperature={self.temperature}, kind={self.kind!r}, eps={self.eps}, backend={self.backend!r}{extra}"

    def _term(self, feats_orig, grads_orig, feats_aug, grads_aug, size, mask=None, crop=None, flip=None):
        """InfoNCE (cross-entropy against column 0, mean over rows) of the logits under the negatives option."""
        cam_orig = ops.batched_cam(feats_orig, grads_orig, self.kind, backend=self.backend)
        cam_aug = ops.batched_cam(feats_aug, grads_aug, self.kind, backend=self.backend)
        kw = dict(size=size, temperature=self.temperature, eps=self.eps, backend=self.backend)
        B = cam_aug.shape[0]
        if self.negatives == "global" and group_size(self.group) > 1:
            neg_cam, neg_mask, self_index = gather_negatives(cam_aug, mask, self.group)
            kw.update(neg_cam=neg_cam, neg_mask=neg_mask, self_index=self_index)
        elif self.chunk is not None and self.chunk < B:
            if B % self.chunk == 1:
                raise ValueError(f"chunk: a batch of {B} in chunks of {self.chunk} leaves a last chunk of 1 "
                                 f"sample, which has no negatives")
            total = cam_aug.new_zeros((), dtype=torch.float32)
            for s in range(0, B, self.chunk):
                rows = slice(s, s + self.chunk)
                logits = ops.contrast_logits(
                    cam_orig[rows], cam_aug[rows], mask=mask[rows] if mask is not None else None,
                    crop=crop[rows] if crop is not None else None, flip=flip[rows] if flip is not None else None,
                    **kw)
                total = total + _infonce(logits, "sum")
            return total / B
        logits = ops.contrast_logits(cam_orig, cam_aug, mask=mask, crop=crop, flip=flip, **kw)
        return _infonce(logits, "mean")


def _infonce(logits: torch.Tensor, reduction: str) -> torch.Tensor:
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction=reduction)


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
        return self._term(feats_orig, grads_orig, feats_aug, grads_aug, tuple(mask.shape[1:]), mask=mask)


class CGCLoss(_ContrastLoss):
    """Contrastive Grad-CAM consistency term: the original view's CAM warped by the crop box and flip
    against the crop view's CAM.

    ``forward(feats_orig, grads_orig, feats_aug, grads_aug, crop, flip)`` with ``crop [B, 4]`` integer
    ``(top, left, height, width)`` in image pixels and ``flip [B]`` bool; ``size`` (constructor) is the
    image size ``(H, W)``. Returns a scalar.
    """

    def __init__(self, size: tuple[int, int] = (224, 224), **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = ops.check_size(size)

    def forward(self, feats_orig, grads_orig, feats_aug, grads_aug, crop: torch.Tensor,
                flip: torch.Tensor) -> torch.Tensor:
        return self._term(feats_orig, grads_orig, feats_aug, grads_aug, self.size, crop=crop, flip=flip)


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
        if kind not in ("hires", "grad"):
            raise ValueError(f"kind: expected 'hires' or 'grad', got {kind!r}")
        self.size, self.kind, self.backend = ops.check_size(size), kind, backend
        self.eps = ops.check_positive(eps, "eps", ops.EPS_MAX)

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
