"""Insertion and deletion AUC (RISE causal metrics; upstream §7.3), batched on the device.

Curve of one image (``n`` steps, ``n + 1`` points):
- pixels are ranked by **descending saliency**; ties keep ascending row-major index (stable sort), so
  the order is deterministic (the research code's ``argsort`` left ties unordered);
- point ``k`` (``k = 0 .. n``) is the image in which the first ``min(k * pixels_per_step, H*W)`` ranked
  pixels come from the *finish* image and the rest from the *start* image
  (insertion: start = substrate, finish = image; deletion: start = image, finish = substrate);
  all channels of a pixel move together;
- its score is the softmax probability of the *tracked class* = the model's argmax prediction on the
  unmodified image (not the label), as the research code's ``Sequential(net, Softmax)``;
- AUC = trapezoid rule with unit spacing normalised to ``[0, 1]``: ``(sum(s) - s_0/2 - s_n/2) / n``
  (the research normalisation; a partial last step is not weighted down, as there).

Defaults follow the research script at 224x224: ``n = 28`` steps of ``224 * 8 = 1792`` pixels. For
other sizes the default is ``n = 28`` steps of ``ceil(H*W / 28)`` pixels (``n`` may come out smaller
when ``H*W`` is tiny; the real ``n`` is ``ceil(H*W / pixels_per_step)``).

Substrates: ``"blur"`` = the research blur: an 11x11 kernel equal to ``scipy.ndimage.gaussian_filter``
(sigma 5, truncate 4, mode ``reflect``) of a centred delta (computed here in closed form, in torch),
applied per channel with **zero padding** of 5 (``conv2d(padding=5)``) to the normalised image;
``"zeros"`` = all-zero image (RISE's deletion substrate; zero of a normalised image is the mean
colour); a tensor broadcastable to ``[B, C, H, W]``; or a callable ``images -> [B, C, H, W]``.

Evaluation: the model is put in eval mode for the call (each submodule's mode is restored after),
runs under ``torch.no_grad``, and sees the ``B * (n + 1)`` step images built on the fly, at most
``batch_size`` at a time (one ``[batch_size, C, H, W]`` buffer, never the whole stack).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BLUR_SIGMA",
    "BLUR_SIZE",
    "DEFAULT_STEPS",
    "blur",
    "blur_kernel",
    "causal_curve",
    "curve_auc",
    "deletion_auc",
    "insertion_auc",
]

BLUR_SIZE = 11
BLUR_SIGMA = 5.0
BLUR_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter default
DEFAULT_STEPS = 28  # research: 224*224 / (224*8)
DEFAULT_BATCH_SIZE = 256

Substrate = str | Tensor | Callable[[Tensor], Tensor]


def blur_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA, dtype: torch.dtype = torch.float64) -> Tensor:
    """``[size, size]``: ``scipy.ndimage.gaussian_filter(delta, sigma)`` of a centred delta, mode ``reflect``.

    Separable, so it is ``outer(k, k)`` with ``k[i] = sum_j g[j] * [reflect(i + j) == size // 2]``, where
    ``g`` is the normalised sampled Gaussian of radius ``int(truncate * sigma + 0.5)`` and ``reflect``
    is scipy's half-sample symmetric extension (``d c b a | a b c d | d c b a``). Sums to 1.
    """
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    m = (torch.arange(size, dtype=torch.int64)[:, None] + x.to(torch.int64)[None, :]) % (2 * size)
    m = torch.where(m >= size, 2 * size - 1 - m, m)  # [size, 2*radius+1] source index
    k = (g[None, :] * (m == size // 2)).sum(dim=1)
    return torch.outer(k, k).to(dtype)


def blur(images: Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> Tensor:
    """``[B, C, H, W] -> [B, C, H, W]``: per-channel :func:`blur_kernel` convolution, zero padding ``size // 2``."""
    c = images.shape[1]
    k = blur_kernel(size, sigma, images.dtype).to(images.device)
    return F.conv2d(images, k.expand(c, 1, size, size), padding=size // 2, groups=c)


def _substrate(substrate: Substrate, images: Tensor) -> Tensor:
    if isinstance(substrate, str):
        if substrate == "blur":
            return blur(images)
        if substrate == "zeros":
            return torch.zeros_like(images)
        raise ValueError(f"substrate: expected 'blur', 'zeros', a tensor or a callable, got {substrate!r}")
    out = substrate(images) if callable(substrate) else substrate
    if not isinstance(out, Tensor):
        raise ValueError(f"substrate: expected a tensor, got {type(out).__name__}")
    try:
        return out.to(images).expand_as(images)
    except RuntimeError as e:
        raise ValueError(f"substrate: shape {tuple(out.shape)} does not broadcast to {tuple(images.shape)}") from e


def _pixels_per_step(hw: int, steps: int | None, pixels_per_step: int | None) -> int:
    if steps is not None and pixels_per_step is not None:
        raise ValueError("give steps or pixels_per_step, not both")
    if pixels_per_step is None:
        steps = DEFAULT_STEPS if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps: expected >= 1, got {steps}")
        return math.ceil(hw / steps)
    if pixels_per_step < 1:
        raise ValueError(f"pixels_per_step: expected >= 1, got {pixels_per_step}")
    return pixels_per_step


def curve_auc(scores: Tensor) -> Tensor:
    """``[B, n + 1] -> [B]``: ``(sum(s) - s_0/2 - s_n/2) / n`` (trapezoid, unit spacing, normalised by ``n``)."""
    n = scores.shape[1] - 1
    if n < 1:
        raise ValueError(f"scores: expected at least 2 points per curve, got shape {tuple(scores.shape)}")
    return (scores.sum(dim=1) - scores[:, 0] / 2 - scores[:, -1] / 2) / n


@torch.no_grad()
def causal_curve(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    mode: str,
    *,
    steps: int | None = None,
    pixels_per_step: int | None = None,
    substrate: Substrate = "blur",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """The insertion (``mode="ins"``) or deletion (``mode="del"``) curve: ``[B, n + 1]`` probabilities.

    ``model``: ``[N, C, H, W] -> [N, classes]`` logits; ``images``: ``[B, C, H, W]`` model inputs (on the
    model's device); ``maps``: ``[B, H, W]`` saliency at image resolution. See the module docstring.
    """
    if images.dim() != 4:
        raise ValueError(f"images: expected [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if maps.shape != (b, h, w):
        raise ValueError(f"maps: expected [B, H, W] = {(b, h, w)}, got shape {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps: holds NaN or infinite values")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images: holds NaN or infinite values")
    if mode not in ("ins", "del"):
        raise ValueError(f"mode: expected 'ins' or 'del', got {mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    hw = h * w
    pps = _pixels_per_step(hw, steps, pixels_per_step)
    n = math.ceil(hw / pps)

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        tracked = torch.cat([model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, b, batch_size)])
        sub = _substrate(substrate, images)
        start, finish = (sub, images) if mode == "ins" else (images, sub)
        start, finish = start.flatten(2), finish.flatten(2)  # [B, C, HW]
        order = maps.to(images.device).flatten(1).sort(dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(hw, device=order.device).expand(b, hw))  # rank of each pixel
        acc = torch.float64 if images.dtype == torch.float64 else torch.float32  # softmax in >= float32
        scores = torch.empty(b * (n + 1), dtype=acc, device=images.device)
        for lo in range(0, b * (n + 1), batch_size):
            j = torch.arange(lo, min(lo + batch_size, b * (n + 1)), device=images.device)
            img, k = j // (n + 1), j % (n + 1)
            moved = rank[img] < (k * pps).clamp(max=hw)[:, None]  # [chunk, HW]
            x = torch.where(moved[:, None, :], finish[img], start[img]).view(-1, c, h, w)
            prob = model(x).to(acc).softmax(dim=1)
            scores[lo : lo + j.numel()] = prob.gather(1, tracked[img, None])[:, 0]
    finally:
        for m, t in modes:
            m.training = t
    return scores.view(b, n + 1)


def insertion_auc(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    *,
    steps: int | None = None,
    pixels_per_step: int | None = None,
    substrate: Substrate = "blur",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """Insertion AUC, ``[B]`` in ``[0, 1]``: pixels of ``images`` ``[B, C, H, W]`` are copied into the
    ``substrate`` (default the research blur) in descending order of ``maps`` ``[B, H, W]``; higher is
    better. ``n = 28`` steps by default (``224 * 8`` pixels at 224x224). See the module docstring."""
    scores = causal_curve(
        model,
        images,
        maps,
        "ins",
        steps=steps,
        pixels_per_step=pixels_per_step,
        substrate=substrate,
        batch_size=batch_size,
    )
    return curve_auc(scores)


def deletion_auc(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    *,
    steps: int | None = None,
    pixels_per_step: int | None = None,
    substrate: Substrate = "zeros",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """Deletion AUC, ``[B]`` in ``[0, 1]``: pixels of ``images`` ``[B, C, H, W]`` are replaced by the
    ``substrate`` (default zeros, as RISE) in descending order of ``maps`` ``[B, H, W]``; lower is
    better. See the module docstring."""
    scores = causal_curve(
        model,
        images,
        maps,
        "del",
        steps=steps,
        pixels_per_step=pixels_per_step,
        substrate=substrate,
        batch_size=batch_size,
    )
    return curve_auc(scores)
