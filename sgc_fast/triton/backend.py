"""The Triton backend's entry points, called by :mod:`sgc_fast.ops` once it has validated the arguments:
``batched_cam`` and ``contrast_logits`` on the current CUDA device, or through plain autograd Functions under
``TRITON_INTERPRET=1``."""

from __future__ import annotations

import contextlib

import torch

from . import INTERPRET, unavailable_reason

__all__ = ["batched_cam", "contrast_logits"]


def _check_device(t: torch.Tensor) -> None:
    why = unavailable_reason(t.device)
    if why is not None:
        raise RuntimeError(f"triton backend cannot run: {why}")


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' one (eager calls; under torch.compile the
    generated code guards the device itself)."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)()
    if t.device.type == "cuda" and not compiling:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def batched_cam(feats: torch.Tensor, grads: torch.Tensor, kind: str) -> torch.Tensor:
    """CAM of every sample: ``feats [B, K, h, w]`` and ``grads`` ``[B, K, h, w]`` (any strides) or the compact
    ``[B, K]`` form of a spatially constant gradient -> ``[B, h, w]`` (float32; float64 for float64 input).

    Differentiable once; the backward writes ``dfeats`` and ``dgrads`` in one pass (``[B, K]`` for the
    compact form, never a full-size gradient)."""
    _check_device(feats)
    from . import batched_cam_kernel as _op

    if INTERPRET:
        return _op.BatchedCamFunction.apply(feats, grads, kind)
    with _on_device(feats):
        return torch.ops.sgc_fast.triton_batched_cam(feats, grads, kind)


def contrast_logits(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    mask: torch.Tensor | None,
    crop: torch.Tensor | None,
    flip: torch.Tensor | None,
    neg_cam: torch.Tensor | None,
    neg_mask: torch.Tensor | None,
    self_index: torch.Tensor | None,
    size: list[int],
    temperature: float,
    eps: float,
) -> torch.Tensor:
    """Saliency-contrast logits (see :func:`sgc_fast.reference.contrast_logits`), differentiable w.r.t. the
    CAMs. Arguments are validated by :func:`sgc_fast.ops.contrast_logits`, which calls this."""
    _check_device(cam_aug)
    from . import contrast_logits_op as _op

    args = (cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, list(size), float(temperature),
            float(eps))
    if INTERPRET:
        return _op.ContrastLogitsFunction.apply(*args)
    with _on_device(cam_aug):
        return torch.ops.sgc_fast.triton_contrast_logits(*args)[0]
