"""Pure-PyTorch semantics of sgc_fast: the oracle of every test and the fallback backend.

Every function here is plain differentiable PyTorch (any order of derivative) and materialises the
full-resolution maps; the fused backends compute exactly the same numbers without them.
``docs/semantics.md`` states the same definitions in prose. Shapes:

- ``feats``, ``grads``: ``[B, K, h, w]`` activations of the target layer and ``d y_t / d feats``;
- ``cam``: ``[B, h, w]``;
- ``mask``: ``[B, H, W]``, nonzero = salient (bool, uint8 or float in {0, 1}); ``crop``: ``[B, 4]`` integer
  ``(top, left, height, width)`` in pixels of the ``H x W`` map; ``flip``: ``[B]`` bool.

Reduced-precision inputs (fp16/bf16) are computed in float32; float64 stays float64.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .interp import warp_matrices

__all__ = ["batched_cam", "cam_maps", "warp_maps", "contrast_logits", "saliency_contrast_loss", "NORM_EPS"]

#: Floor of the L2 norm in the final normalisation (``F.normalize``'s default).
NORM_EPS = 1e-12


def _exact(fn):
    """Run ``fn`` with autocast disabled on its tensors' device: the reference computes in float32 (or
    float64) whatever autocast says, like the fused backends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if dev not in ("cpu", "cuda"):
            return fn(*args, **kwargs)
        with torch.autocast(dev, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


@_exact
def batched_cam(feats: torch.Tensor, grads: torch.Tensor, kind: str = "hires") -> torch.Tensor:
    """CAM of every sample: ``[B, K, h, w] x [B, K, h, w] -> [B, h, w]``.

    ``kind="hires"``: ``relu(sum_k grads * feats)``; ``kind="grad"``: ``relu(sum_k mean_p(grads) * feats)``.
    """
    dt = compute_dtype(feats, grads)
    a, g = feats.to(dt), grads.to(dt)
    if kind == "hires":
        z = (g * a).sum(1)
    elif kind == "grad":
        z = torch.einsum("bk,bkhw->bhw", g.mean((2, 3)), a)
    else:
        raise ValueError(f"kind: expected 'hires' or 'grad', got {kind!r}")
    return torch.relu(z)


@_exact
def cam_maps(cam: torch.Tensor, size: tuple[int, int], eps: float = 1e-8) -> torch.Tensor:
    """Upsample ``[B, h, w]`` bilinearly to ``[B, H, W]`` (align_corners=False) and sum-normalise:
    ``m = u / (sum(u) + eps) + eps``."""
    u = F.interpolate(cam[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return u / (u.sum((1, 2), keepdim=True) + eps) + eps


@_exact
def warp_maps(maps: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """CGC warp of full-size maps ``[B, H, W]``: crop each box, resize back to ``H x W`` bilinearly
    (align_corners=False), mirror horizontally where ``flip`` is set."""
    B, H, W = maps.shape
    # Cropping then resizing a map is linear: rows and columns separately. The warp of the CAM grid
    # itself (``warp_matrices`` with an identity "CAM") is the same construction on the H x W grid.
    ry, rx = warp_matrices(crop, flip, (H, W), (H, W), dtype=maps.dtype)
    return ry @ maps @ rx.transpose(1, 2)


@_exact
def contrast_logits(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    crop: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    size: tuple[int, int] = (224, 224),
    temperature: float = 0.5,
    eps: float = 1e-8,
    neg_cam: torch.Tensor | None = None,
    neg_mask: torch.Tensor | None = None,
    self_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Saliency-contrast logits, already divided by ``temperature``.

    Without separate negatives: ``[B, B]``, row ``b`` = ``[a_b.p_b, a_b.a_j for j != b ascending]``.
    With ``neg_cam [N, h, w]``: ``[B, 1 + N]`` = ``[a_b.p_b, a_b.n_0, ..., a_b.n_{N-1}]`` with ``-inf``
    at column ``1 + self_index[b]`` where ``self_index[b] >= 0``. Vectors are L2-normalised maps
    (``F.normalize`` semantics). Output float32 (float64 for float64 inputs).
    """
    dt = compute_dtype(cam_orig, cam_aug, neg_cam)
    m_orig = cam_maps(cam_orig.to(dt), size, eps)
    m_aug = cam_maps(cam_aug.to(dt), size, eps)
    p = warp_maps(m_orig, crop, flip) if crop is not None else m_orig
    a = m_aug * (mask != 0).to(dt) if mask is not None else m_aug
    a_hat = F.normalize(a.flatten(1), dim=1, eps=NORM_EPS)
    p_hat = F.normalize(p.flatten(1), dim=1, eps=NORM_EPS)
    pos = (a_hat * p_hat).sum(1, keepdim=True)
    B = a_hat.shape[0]
    if neg_cam is None:
        sim = a_hat @ a_hat.T
        off_diag = ~torch.eye(B, dtype=torch.bool, device=sim.device)
        neg = sim[off_diag].view(B, B - 1)
    else:
        n = cam_maps(neg_cam.to(dt), size, eps)
        if neg_mask is not None:
            n = n * (neg_mask != 0).to(dt)
        n_hat = F.normalize(n.flatten(1), dim=1, eps=NORM_EPS)
        neg = a_hat @ n_hat.T
        if self_index is not None:
            cols = torch.arange(neg.shape[1], device=neg.device)
            neg = neg.masked_fill(cols[None, :] == self_index.to(neg.device)[:, None], float("-inf"))
    return torch.cat([pos, neg], 1) / temperature


@_exact
def saliency_contrast_loss(
    feats_orig: torch.Tensor,
    grads_orig: torch.Tensor,
    feats_aug: torch.Tensor,
    grads_aug: torch.Tensor,
    *,
    kind: str = "hires",
    mask: torch.Tensor | None = None,
    crop: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    size: tuple[int, int] = (224, 224),
    temperature: float = 0.5,
    eps: float = 1e-8,
) -> torch.Tensor:
    """InfoNCE over :func:`contrast_logits` of the two views' CAMs: cross-entropy against column 0,
    mean over rows."""
    logits = contrast_logits(
        batched_cam(feats_orig, grads_orig, kind),
        batched_cam(feats_aug, grads_aug, kind),
        mask=mask, crop=crop, flip=flip, size=size, temperature=temperature, eps=eps,
    )
    return F.cross_entropy(logits, logits.new_zeros(logits.shape[0], dtype=torch.long))
