"""Bilinear interpolation as explicit, separable matrices.

``F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)`` on a map ``x [h, w]`` equals
``Uy @ x @ Ux.T`` with ``Uy = upsample_matrix(H, h)`` ``[H, h]`` and ``Ux = upsample_matrix(W, w)``.
The CGC warp (crop rows ``i:i+h'`` and columns ``j:j+w'`` of the upsampled map, resize back to
``H x W``, optionally mirror horizontally) is another separable linear map, so the warped map of a
CAM ``c`` is ``Vy @ c @ Vx.T`` with the per-sample matrices of :func:`warp_matrices`.

Source coordinates follow PyTorch's ``align_corners=False`` rule: ``src = (dst + 0.5) * in / out - 0.5``,
clamped below at 0; the right neighbour is clamped to the last input index.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["upsample_matrix", "warp_matrices"]


def _resize_matrix(out_size: int, in_size: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``[out_size, in_size]`` matrix of 1-D bilinear resizing with ``align_corners=False`` (cached: treat
    the result as read-only)."""
    device = torch.device(device or "cpu")
    if not cacheable(out_size, in_size):
        return _resize_matrix_cached.__wrapped__(int(out_size), int(in_size), dtype, device)
    return _resize_matrix_cached(int(out_size), int(in_size), dtype, device)


def cacheable(*sizes) -> bool:
    """Whether constant tensors may come from (and go into) a cache: plain integer sizes, no tracing
    (torch.compile, fake or functional tensors), so that traced and real tensors never mix."""
    if not all(type(s) is int for s in sizes):
        return False
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return False
    stack_len = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return stack_len is None or stack_len() == 0


@functools.lru_cache(maxsize=64)
def _resize_matrix_cached(out_size: int, in_size: int, dtype, device) -> torch.Tensor:
    dst = torch.arange(out_size, dtype=torch.float64, device=device)
    src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    lam = src - i0.to(torch.float64)
    m = torch.zeros(out_size, in_size, dtype=torch.float64, device=device)
    rows = torch.arange(out_size, device=device)
    m.index_put_((rows, i0), 1.0 - lam, accumulate=True)
    m.index_put_((rows, i1), lam, accumulate=True)
    return m.to(dtype)


def upsample_matrix(out_size: int, in_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[out_size, in_size]``: bilinear upsampling of one axis (``align_corners=False``)."""
    return _resize_matrix(out_size, in_size, dtype, device)


def warp_matrices(
    crop: torch.Tensor, flip: torch.Tensor, size: tuple[int, int], cam_size: tuple[int, int], dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample separable matrices of "upsample, crop, resize back, flip" (batched, no host sync).

    Args:
        crop: ``[B, 4]`` integer boxes ``(top, left, height, width)`` in pixels of the ``H x W`` map.
        flip: ``[B]`` bool, mirror the resized crop horizontally.
        size: ``(H, W)`` of the upsampled map.
        cam_size: ``(h, w)`` of the CAM.

    Returns:
        ``Vy [B, H, h]`` and ``Vx [B, W, w]`` such that the warped map of ``c [h, w]`` is
        ``Vy[b] @ c @ Vx[b].T``.
    """
    H, W = size
    h, w = cam_size
    device = crop.device
    crop = crop.to(torch.int64)
    vy = _crop_resize(_resize_matrix(H, h, device=device), crop[:, 0], crop[:, 2])
    vx = _crop_resize(_resize_matrix(W, w, device=device), crop[:, 1], crop[:, 3])
    vx = torch.where(flip.to(device=device, dtype=torch.bool)[:, None, None], vx.flip(1), vx)
    return vy.to(dtype), vx.to(dtype)


def _crop_resize(u: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Rows of ``R_b @ u`` where ``R_b`` resizes ``u``'s rows ``start_b : start_b + length_b`` back to
    ``u.shape[0]`` rows: ``[B, out, in]``. Each output row mixes two rows of ``u``."""
    out = u.shape[0]
    dst = torch.arange(out, dtype=torch.float64, device=u.device)
    n = length.to(torch.float64)[:, None]
    src = ((dst + 0.5) * (n / out) - 0.5).clamp_min(0.0)  # [B, out], relative to the crop
    i0 = torch.minimum(src.floor().long(), length[:, None] - 1)
    i1 = torch.minimum(i0 + 1, length[:, None] - 1)
    lam = (src - i0.to(torch.float64))[..., None]
    return (1.0 - lam) * u[start[:, None] + i0] + lam * u[start[:, None] + i1]
