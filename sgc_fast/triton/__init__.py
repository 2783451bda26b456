"""Triton backend of sgc_fast: ``batched_cam`` and the masked ``contrast_logits`` sweep as Triton kernels.

Where it runs:

- CUDA tensors (Triton importable): the kernels go through ``torch.library.triton_op`` ops
  (``sgc_fast::triton_batched_cam``, ``sgc_fast::triton_contrast_sweep`` and their backwards), so
  ``torch.compile`` sees inside them; ``contrast_logits`` is the custom op ``sgc_fast::triton_contrast_logits``
  around the shared float64 glue of :mod:`sgc_fast.contrast`.
- CPU tensors when ``TRITON_INTERPRET=1`` was set before this package was imported: the same kernels run in
  Triton's interpreter through plain ``torch.autograd.Function`` s (interpreted kernels cannot be traced
  through ``wrap_triton``). This is how CI tests the kernels; it is slow.

Files: this package's ``__init__`` says whether the kernels can run (:func:`unavailable_reason`) and imports
nothing of sgc_fast; :mod:`.backend` holds the entry points ``ops`` calls; then one file per op (named like
csrc/): :mod:`.batched_cam_kernel`, :mod:`.contrast_sweep_kernel`, :mod:`.contrast_logits_op` (the op
that ties the sweep to the shared coefficients). :mod:`.launch` holds what they share (interpreter flag,
autotune configs, how kernels are launched).
"""

from __future__ import annotations

import os

import torch

__all__ = ["INTERPRET", "unavailable_reason"]

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
