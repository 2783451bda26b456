"""Degenerate problems on every fused backend of the machine: an all-zero CAM, an empty mask, identical maps
(the two views and two samples) and a one-pixel mask, all at once in one float32 SGC problem. Loss and gradients
must stay within 1e-5 (relative to the largest value) of the float64 reference on the same values.

On a CUDA machine this runs the ``cuda`` and ``triton`` backends there (``pytest -m gpu`` picks it up); on the CPU
it runs the C++ ``cpu`` backend, so CI checks the same cases."""

from __future__ import annotations

import pytest
import torch
from problem import assert_close, random_views

import sgc_fast

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BACKENDS = [b for b in (("cuda", "triton") if CUDA else ("cpu",)) if b in sgc_fast.available_backends(DEVICE)]
RTOL = 1e-5
pytestmark = [pytest.mark.gpu] if CUDA else []


def _degenerate(B: int = 6, K: int = 32, h: int = 7, w: int = 7, H: int = 56, W: int = 56):
    torch.manual_seed(0)
    views = random_views(B, K, h, w, H, W, "sgc", dtype=torch.float32, signed_grads=False)
    with torch.no_grad():
        views.grads_orig[0].neg_()  # positive feats, negative grads: sample 0's CAM is all zero (relu)
        views.grads_aug[0].neg_()
        views.mask[1] = False  # an empty mask
        views.mask[2] = False
        views.mask[2, H // 3, W // 2] = True  # a one-pixel mask
        views.feats_aug[3].copy_(views.feats_orig[3])  # identical views of sample 3
        views.grads_aug[3].copy_(views.grads_orig[3])
        views.mask[3] = True
        for t in views.leaves:  # sample 5 a copy of sample 4: identical negatives
            t[5].copy_(t[4])
        views.mask[5] = views.mask[4]
    views.mask = views.mask.to(DEVICE)
    for name in ("feats_orig", "grads_orig", "feats_aug", "grads_aug"):
        setattr(views, name, getattr(views, name).detach().to(DEVICE).requires_grad_())
    return views


def _loss_and_grads(views, backend):
    loss = sgc_fast.saliency_contrast_loss(*views.leaves, backend=backend, **views.frame())
    return [loss, *torch.autograd.grad(loss, views.leaves)]


@pytest.mark.skipif(not BACKENDS, reason="no fused backend built for this device")
@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_problem_matches_float64(backend):
    views = _degenerate()
    cam = sgc_fast.batched_cam(views.feats_orig, views.grads_orig, backend=backend)
    assert bool((cam[0] == 0).all()) and bool((cam[1:] > 0).any())  # the zero CAM is there
    got = _loss_and_grads(views, backend)
    want = _loss_and_grads(views.as_double(), "reference")
    for name, g, w in zip(("loss", "dfeats_orig", "dgrads_orig", "dfeats_aug", "dgrads_aug"), got, want, strict=True):
        assert g.dtype == torch.float32 and bool(torch.isfinite(g).all()), name
        assert_close(g, w, RTOL, what=f"{backend} {name}")
    # the empty mask's aug view gets no gradient; the zero CAM's leaves get none either (relu)
    assert bool((got[3][1] == 0).all()) and bool((got[4][1] == 0).all())
    assert bool((got[1][0] == 0).all()) and bool((got[2][0] == 0).all())
