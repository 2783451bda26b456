"""Hardening, no silent nonsense: degenerate runs refused, thresholds that empty every mask, double backward
through the fused ops, sizes that would be changed behind the user's back."""

from __future__ import annotations

import pytest
import torch
from hardening_common import BACKENDS, TINY, build_cache

import sgc_fast
from sgc_fast.saliency.providers import SaliencyProvider
from sgc_fast.train import cli

pytestmark = pytest.mark.usefixtures("one_thread")

class _Empty(SaliencyProvider):
    name, needs_images = "empty", False

    def config(self):
        return {}

    def masks_for(self, indices, images):
        return torch.zeros(len(indices), 48, 48, dtype=torch.bool)


def test_a_cache_of_empty_masks_is_refused_unless_allowed(tmp_path):
    cache = tmp_path / "empty.sgcmask"
    build_cache(cache, size=48, length=None, provider=_Empty(), batch_size=512)
    argv = [a for a in TINY if a not in ("ground-truth",)]
    argv[argv.index("--saliency") + 1:argv.index("--saliency") + 1] = [str(cache)]
    with pytest.raises(SystemExit, match="every saliency mask is empty"):
        cli.main([*argv, "--epochs", "1", "--save_dir", str(tmp_path / "c"), "--log_dir", str(tmp_path / "l")])
    out = cli.main([*argv, "--epochs", "1", "--allow-degenerate", "--save_dir", str(tmp_path / "c"), "--log_dir",
                    str(tmp_path / "l")])
    assert out["epoch"] == 1


@pytest.mark.parametrize("threshold", ["nan", "5", "1", "-0.1"])
def test_sgc_saliency_refuses_thresholds_that_empty_every_mask(threshold, tmp_path):
    from sgc_fast.saliency.cli import main as saliency_main

    with pytest.raises(SystemExit, match="--threshold"):
        saliency_main(["--dataset", "synthetic", "--provider", "opencv", "--threshold", threshold, "--out",
                       str(tmp_path / "x.sgcmask")])


def test_one_cell_cams_are_refused_unless_allowed(tmp_path):
    argv = [*TINY]
    argv[argv.index("48")] = "32"  # --image-size 32 at output stride 32: 1x1 CAMs
    with pytest.raises(SystemExit, match="CAMs are 1x1"):
        cli.main([*argv, "--epochs", "1", "--save_dir", str(tmp_path / "c"), "--log_dir", str(tmp_path / "l")])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_double_backward_through_the_fused_ops_raises(backend):
    co = torch.rand(3, 4, 4, dtype=torch.float64, requires_grad=True)
    ca = torch.rand(3, 4, 4, dtype=torch.float64, requires_grad=True)
    logits = sgc_fast.contrast_logits(co, ca, mask=torch.rand(3, 8, 8) < 0.5, size=(8, 8), backend=backend)
    (g,) = torch.autograd.grad(logits.logsumexp(1).sum(), co, create_graph=True)
    with pytest.raises(RuntimeError, match="contrast_logits: the gradients of the fused backends are not "):
        torch.autograd.grad(g.sum(), (co, ca))
    feats = torch.rand(2, 3, 4, 4, requires_grad=True)
    grads = torch.rand(2, 3, 4, 4, requires_grad=True)
    cam = sgc_fast.batched_cam(feats, grads, backend=backend)
    (g,) = torch.autograd.grad((cam ** 2).sum(), feats, create_graph=True)
    with pytest.raises(RuntimeError, match="batched_cam: .* backend='reference'"):
        torch.autograd.grad(g.sum(), grads)
    # first derivatives under create_graph=True are unchanged
    (g2,) = torch.autograd.grad((sgc_fast.batched_cam(feats, grads, backend=backend) ** 2).sum(), feats)
    assert torch.equal(g.detach(), g2)


def test_sgc_eval_refuses_an_image_size_it_would_change(tmp_path):
    from sgc_fast.eval.cli import main as eval_main

    with pytest.raises(SystemExit, match="--image-size: expected >= 32, got 16"):
        eval_main(["--checkpoint", str(tmp_path / "none.pt"), "--image-size", "16", "--out", ""])


