# ruff: noqa: UP045 - custom_op schemas are inferred from the annotations: keep typing.Optional there
"""contrast_logits on the Triton backend: the shared float64 glue of :mod:`sgc_fast.ops` / :mod:`sgc_fast.contrast`
around the Triton sweep (:mod:`.contrast_sweep_kernel`).

- The masked (SGC) case runs the sweep kernels; the unmasked (CGC) case needs no per-pixel pass and uses
  ``contrast.lowres_stats`` / ``contrast.lowres_grads`` inside ``fused.contrast_forward`` / ``contrast_backward``.
- CUDA: the custom op ``sgc_fast::triton_contrast_logits`` (same signature and outputs, ``(logits, stats)``, as
  ``sgc_fast::contrast_logits``), opaque to ``torch.compile`` like its C++ twin: its glue indexes with boolean
  masks, which do not trace. The sweeps inside it are the triton_ops ``sgc_fast::triton_contrast_sweep`` and
  ``sgc_fast::triton_contrast_sweep_backward``.
- Interpreter (CPU tensors, ``TRITON_INTERPRET=1``): :class:`ContrastLogitsFunction`, same code, kernels
  launched directly.

The backward is not differentiable again.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import fused
from ..once import first_order_only
from . import INTERPRET
from .contrast_sweep_kernel import contrast_sweep, contrast_sweep_backward

__all__ = ["ContrastLogitsFunction"]


def _sweep(pb, mask_u8, neg_mask_u8, dtype):
    args = fused.sweep_args(pb, mask_u8, neg_mask_u8, dtype)
    if INTERPRET:
        return contrast_sweep(*args)
    return torch.ops.sgc_fast.triton_contrast_sweep(*args)


def _sweep_backward(pb, mask_u8, neg_mask_u8, coefs, dtype):
    args = fused.sweep_args(pb, mask_u8, neg_mask_u8, dtype)
    if INTERPRET:
        return contrast_sweep_backward(*args, *coefs)
    return torch.ops.sgc_fast.triton_contrast_sweep_backward(*args, *coefs)


@torch.library.custom_op("sgc_fast::triton_contrast_logits", mutates_args=())
def _contrast_logits_op(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    mask: Optional[torch.Tensor],
    crop: Optional[torch.Tensor],
    flip: Optional[torch.Tensor],
    neg_cam: Optional[torch.Tensor],
    neg_mask: Optional[torch.Tensor],
    self_index: Optional[torch.Tensor],
    size: list[int],
    temperature: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logits, stats); stats are the float64 inner products kept for the backward."""
    return fused.contrast_forward(_sweep, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size,
                                temperature, eps)


@_contrast_logits_op.register_fake
def _(cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size, temperature, eps):
    dt = fused.kernel_dtype(cam_orig, cam_aug, neg_cam)
    logits = cam_aug.new_empty(fused.logits_shape(cam_aug, neg_cam), dtype=dt)
    return logits, cam_aug.new_empty((fused.stats_numel(cam_aug, neg_cam),), dtype=torch.float64)


def _setup_context(ctx, inputs, output):
    cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size, temperature, eps = inputs
    ctx.size, ctx.temperature, ctx.eps = size, temperature, eps
    ctx.problem = fused.take_problem(output[1])  # the forward's interpolation matrices, reused by the backward
    ctx.save_for_backward(cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, output[1])


def _backward(ctx, grad_logits, grad_stats):
    cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, packed = ctx.saved_tensors
    d_orig, d_aug, d_neg = fused.contrast_backward(
        _sweep_backward, grad_logits, packed, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index,
        ctx.size, ctx.temperature, ctx.eps, pb=ctx.problem,
    )
    return first_order_only("contrast_logits", (d_orig, d_aug, None, None, None, d_neg, None, None, None, None, None),
                            (grad_logits, cam_orig, cam_aug, neg_cam))


_contrast_logits_op.register_autograd(_backward, setup_context=_setup_context)


class ContrastLogitsFunction(torch.autograd.Function):
    """The interpreter path (CPU tensors under ``TRITON_INTERPRET=1``): same glue, kernels launched directly."""

    @staticmethod
    def forward(ctx, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size, temperature, eps):
        logits, packed = fused.contrast_forward(_sweep, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask,
                                              self_index, size, temperature, eps)
        ctx.size, ctx.temperature, ctx.eps = size, temperature, eps
        ctx.problem = fused.take_problem(packed)
        ctx.save_for_backward(cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, packed)
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logits):
        return _backward(ctx, grad_logits, None)
