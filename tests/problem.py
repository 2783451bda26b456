"""Random inputs of the contrastive term, and the comparisons the tests make.

Everything is drawn from torch's global generator, which the autouse ``seed`` fixture (conftest.py)
seeds freshly for every test and prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: (B, K, h, w, H, W): small, odd shapes (B = 2, 3; 5x3 grids; H x W not multiples of anything).
SHAPES = [
    (2, 5, 5, 3, 33, 17),
    (3, 8, 7, 7, 24, 20),
]

METHODS = ("sgc", "cgc", "both")


def random_crop(B: int, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 4]`` int64 boxes (top, left, height, width) inside ``H x W`` and ``[B]`` bool flips. At least 2x2
    pixels (where the map allows): a 1x1 crop warps to a constant map, whose gradient is exactly zero in exact
    arithmetic and rounding noise in any floating point, so no relative tolerance can judge it; the 1-pixel crops
    have their own deterministic test (test_parity.py::test_one_pixel_crops)."""
    hh = torch.randint(min(2, H), H + 1, (B,))
    ww = torch.randint(min(2, W), W + 1, (B,))
    top = (torch.rand(B) * (H - hh + 1)).floor().long()
    left = (torch.rand(B) * (W - ww + 1)).floor().long()
    return torch.stack([top, left, hh, ww], 1), torch.rand(B) < 0.5


def random_mask(B: int, H: int, W: int, p: float = 0.6) -> torch.Tensor:
    """``[B, H, W]`` bool: a random blob-free mask (every pixel independently salient with prob. p)."""
    return torch.rand(B, H, W) < p


@dataclass
class Views:
    """Leaf tensors of both views, and the frame arguments of one method."""

    feats_orig: torch.Tensor
    grads_orig: torch.Tensor
    feats_aug: torch.Tensor
    grads_aug: torch.Tensor
    mask: torch.Tensor | None
    crop: torch.Tensor | None
    flip: torch.Tensor | None
    size: tuple[int, int]

    @property
    def leaves(self) -> list[torch.Tensor]:
        return [self.feats_orig, self.grads_orig, self.feats_aug, self.grads_aug]

    def frame(self) -> dict:
        return dict(mask=self.mask, crop=self.crop, flip=self.flip, size=self.size)

    def as_double(self) -> Views:
        """Detached float64 copies (same values) that require grad: the oracle's inputs."""
        def d(t):
            return t.detach().to(torch.float64).requires_grad_()

        return Views(d(self.feats_orig), d(self.grads_orig), d(self.feats_aug), d(self.grads_aug), self.mask,
                     self.crop, self.flip, self.size)


def random_views(B, K, h, w, H, W, method: str, dtype=torch.float64, signed_grads: bool = True) -> Views:
    """Random leaf feats (>= 0, like post-relu activations) and grads (signed by default, so that the
    relu of the CAM is active somewhere and inactive elsewhere)."""
    def feats():
        return torch.rand(B, K, h, w).to(dtype).requires_grad_()

    def grads():
        g = torch.randn(B, K, h, w) + 0.3 if signed_grads else torch.rand(B, K, h, w) + 0.1
        return g.to(dtype).requires_grad_()

    mask = random_mask(B, H, W) if method in ("sgc", "both") else None
    crop, flip = random_crop(B, H, W) if method in ("cgc", "both") else (None, None)
    return Views(feats(), grads(), feats(), grads(), mask, crop, flip, (H, W))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0, what: str = ""):
    """``max|actual - expected| <= rtol * max|expected| + atol`` (same -inf pattern, finite elsewhere)."""
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    a, e = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    assert torch.equal(inf_a, inf_e), f"{what}: -inf at {inf_a.nonzero().tolist()}, expected {inf_e.nonzero().tolist()}"
    assert not torch.isnan(a).any(), f"{what}: NaN in the result"
    a, e = a[~inf_a], e[~inf_e]
    if a.numel() == 0:
        return
    err = (a - e).abs().max().item()
    scale = e.abs().max().item()
    assert err <= rtol * scale + atol, f"{what}: max error {err:.3e} > {rtol:.1e} * {scale:.3e} + {atol:.1e}"


def loss_leaves(B, K, h, w, grads: str, dtype, device, classes: int = 1000):
    """Leaf tensors and a function of them giving the four loss inputs (feats/grads of both views):
    dense grads, or head grads from a ``[classes, K]`` Linear weight."""
    feats_o = torch.rand(B, K, h, w, device=device).to(dtype).requires_grad_()
    feats_a = torch.rand(B, K, h, w, device=device).to(dtype).requires_grad_()
    if grads == "dense":
        scale = 1.0 / (K * h * w) ** 0.5
        g_o = ((torch.randn(B, K, h, w, device=device) + 0.3) * scale).to(dtype).requires_grad_()
        g_a = ((torch.randn(B, K, h, w, device=device) + 0.3) * scale).to(dtype).requires_grad_()
        return [feats_o, g_o, feats_a, g_a], lambda fo, go, fa, ga: (fo, go, fa, ga)
    import sgc_fast

    weight = ((torch.randn(classes, K, device=device) + 0.1) / K**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, classes, (B,), device=device)

    def inputs(fo, fa, wt):
        return fo, sgc_fast.head_grads(wt, fo, targets), fa, sgc_fast.head_grads(wt, fa, targets)

    return [feats_o, feats_a, weight], inputs


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.detach().to(torch.float64) - expected.detach().to(torch.float64)).abs().max().item()
