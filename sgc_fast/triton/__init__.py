"""Triton backend of sgc_fast: ``batched_cam`` and the masked ``contrast_logits`` sweep as Triton kernels.

Where it runs:

- CUDA tensors (Triton importable): the kernels go through ``torch.library.triton_op`` ops
  (``sgc_fast::triton_batched_cam``, ``sgc_fast::triton_contrast_sweep`` and their backwards), so
  ``torch.compile`` sees inside them; ``contrast_logits`` is the custom op ``sgc_fast::triton_contrast_logits``
  around the shared float64 glue of :mod:`sgc_fast.contrast`.
- CPU tensors when ``TRITON_INTERPRET=1`` was set before this package was imported: the same kernels run in
  Triton's interpreter through plain ``torch.autograd.Function`` s (interpreted kernels cannot be traced
  through ``wrap_triton``). This is how CI tests the kernels; it is slow.

Files, one per op (named like csrc/): :mod:`.batched_cam_kernel`, :mod:`.contrast_sweep_kernel`, :mod:`.contrast_logits_op` (the op
that ties the sweep to the shared coefficients). :mod:`.launch` holds what they share (interpreter flag,
autotune configs, how kernels are launched).
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["INTERPRET", "unavailable_reason", "batched_cam", "contrast_logits"]

#: Whether Triton's interpreter was requested when this package was imported (Triton reads it then too).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

try:
    import triton  # noqa: F401

    _TRITON_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without triton
    _TRITON_ERROR = f"triton not importable ({exc})"


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the Triton kernels cannot run on tensors on ``device`` (None when they can)."""
    device = torch.device(device)
    if _TRITON_ERROR is not None:
        return _TRITON_ERROR
    if not hasattr(torch.library, "triton_op"):
        return f"torch {torch.__version__} has no torch.library.triton_op (needs torch >= 2.6)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA not available"
        return None
    if device.type == "cpu":
        if INTERPRET:
            return None
        return "tensors on cpu (set TRITON_INTERPRET=1 before importing sgc_fast to run the kernels interpreted)"
    return f"tensors on {device}"


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
