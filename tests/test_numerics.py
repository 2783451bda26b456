"""Reduced precision, autocast, determinism of the cpu backend, and the L2 consistency baseline.

Precision rule (flash-attention's): with fp16/bf16 inputs, the cpu backend's error against a float64
computation on the same (rounded) values is at most 2x the error of the reference backend given the same
fp16/bf16 inputs, plus a tiny slack.
"""

from __future__ import annotations

import pytest
import research_style as rs
import torch
from problem import METHODS, assert_close, max_error, random_crop, random_mask, random_views

import sgc_fast
from sgc_fast import reference

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
LOW = [BF16, F16]


def rounded(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.detach().to(dtype).requires_grad_()


def assert_within_2x(got, ref_same_precision, exact, slack, what):
    inf = torch.isinf(exact)
    assert torch.equal(torch.isinf(got), inf) and torch.equal(torch.isinf(ref_same_precision), inf), what
    got, ref_same_precision, exact = got[~inf], ref_same_precision[~inf], exact[~inf]
    e_got, e_ref = max_error(got, exact), max_error(ref_same_precision, exact)
    scale = exact.detach().abs().max().item()
    assert e_got <= 2 * e_ref + slack * scale, (
        f"{what}: cpu error {e_got:.3e} > 2 x reference error {e_ref:.3e} + {slack:.0e} x {scale:.3e}"
    )


def slack_of(dtype) -> float:
    """Slack relative to the largest magnitude: fp32 rounding for float32 outputs; one unit in the last
    place for gradients returned in the input's low precision (both backends round the same value)."""
    return 1e-6 if dtype == F32 else torch.finfo(dtype).eps


# ---------------------------------------------------------------------------------------------------------
# fp16 / bf16 inputs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grads_form", ["dense", "compact"])
@pytest.mark.parametrize("kind", ["hires", "grad"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_batched_cam_low_precision(dtype, kind, grads_form):
    B, K, h, w = 4, 16, 7, 5
    feats = rounded(torch.rand(B, K, h, w), dtype)
    grads = rounded(torch.randn(B, K, h, w) + 0.2 if grads_form == "dense" else torch.randn(B, K) + 0.2, dtype)
    upstream = torch.randn(B, h, w)

    def run(backend):
        cam = sgc_fast.batched_cam(feats, grads, kind, backend=backend)
        return (cam, *torch.autograd.grad(cam, (feats, grads), upstream))

    got, ref = run("cpu"), run("reference")
    f64, g64 = feats.detach().double().requires_grad_(), grads.detach().double().requires_grad_()
    g64_full = g64 if grads_form == "dense" else g64[:, :, None, None].expand(B, K, h, w)
    cam64 = reference.batched_cam(f64, g64_full, kind)
    exact = (cam64, *torch.autograd.grad(cam64, (f64, g64), upstream.double()))
    assert got[0].dtype == ref[0].dtype == F32
    assert got[1].dtype == got[2].dtype == dtype
    for name, g, r, e in zip(("cam", "dfeats", "dgrads"), got, ref, exact, strict=True):
        assert_within_2x(g, r, e, slack_of(g.dtype), f"{dtype} {name}")


@pytest.mark.parametrize("method", ["plain", *METHODS, "separate"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_contrast_logits_low_precision(dtype, method):
    B, N, h, w, H, W = 4, 3, 7, 5, 24, 20
    cams = [rounded(torch.relu(torch.randn(n, h, w) + 0.5), dtype) for n in (B, B, N)]
    kw = dict(size=(H, W), temperature=0.5)
    if method in ("sgc", "both", "separate"):
        kw["mask"] = random_mask(B, H, W)
    if method in ("cgc", "both"):
        kw["crop"], kw["flip"] = random_crop(B, H, W)
    inputs = cams[:2]
    if method == "separate":
        inputs = cams
        kw.update(neg_mask=random_mask(N, H, W), self_index=torch.tensor([0, -1, 2, 1]))
    upstream = torch.randn(B, B if method != "separate" else 1 + N)

    def run(backend, xs):
        neg = dict(neg_cam=xs[2]) if len(xs) > 2 else {}
        logits = sgc_fast.contrast_logits(xs[0], xs[1], backend=backend, **neg, **kw)
        finite = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
        return (logits, *torch.autograd.grad(finite, xs, upstream.to(finite.dtype)))

    got, ref = run("cpu", inputs), run("reference", inputs)
    exact = run("reference", [x.detach().double().requires_grad_() for x in inputs])
    assert got[0].dtype == ref[0].dtype == F32
    for i, (g, r, e) in enumerate(zip(got, ref, exact, strict=True)):
        assert g.dtype == (F32 if i == 0 else dtype)
        assert_within_2x(g, r, e, slack_of(g.dtype), f"{dtype} {'logits' if i == 0 else f'd input {i - 1}'}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_loss_low_precision(dtype, method):
    views = random_views(4, 16, 7, 5, 24, 20, method, dtype=dtype)

    def run(backend, v):
        loss = sgc_fast.saliency_contrast_loss(*v.leaves, backend=backend, **v.frame())
        return (loss, *torch.autograd.grad(loss, v.leaves))

    got, ref = run("cpu", views), run("reference", views)
    exact = run("reference", views.as_double())
    assert got[0].dtype == F32 and got[0].dim() == 0
    for name, g, r, e in zip(("loss", "dfeats_orig", "dgrads_orig", "dfeats_aug", "dgrads_aug"), got, ref, exact, strict=True):
        assert torch.isfinite(g).all()
        assert_within_2x(g, r, e, slack_of(g.dtype), f"{dtype} {name}")


def test_mixed_input_dtypes():
    """bf16 feats with fp32 grads (and the reverse) compute in fp32: same CAM as both upcast."""
    feats, grads = torch.rand(3, 8, 5, 3).to(BF16), torch.randn(3, 8, 5, 3) + 0.2
    for backend in ("reference", "cpu"):
        for f, g in ((feats, grads), (feats.float(), grads.to(BF16))):
            cam = sgc_fast.batched_cam(f, g, backend=backend)
            assert cam.dtype == F32
            assert_close(cam, reference.batched_cam(f.float(), g.float()), 1e-6, what=f"{backend} mixed")


# ---------------------------------------------------------------------------------------------------------
# autocast
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_ops_under_autocast_compute_in_fp32(backend, method):
    """float32 inputs with the forward inside autocast(bfloat16) and the backward outside (PyTorch's
    documented use): same float32 results as without autocast (DESIGN §3: "ops work under
    torch.autocast, compute in fp32 internally"). The fused backends' own backward ignores autocast
    too, so for them the gradients also match when taken inside the autocast block (the reference's
    backward is plain autograd, whose matmuls autocast would run in bf16 there)."""
    views = random_views(4, 16, 7, 5, 24, 20, method, dtype=F32)

    def forward():
        cams = [sgc_fast.batched_cam(f, g, backend=backend) for f, g in
                ((views.feats_orig, views.grads_orig), (views.feats_aug, views.grads_aug))]
        logits = sgc_fast.contrast_logits(*cams, backend=backend, **views.frame())
        loss = sgc_fast.saliency_contrast_loss(*views.leaves, backend=backend, **views.frame())
        return cams[0], logits, loss

    def run(backward_inside: bool):
        if backward_inside:
            with torch.autocast("cpu", dtype=BF16):
                out = forward()
                return (*out, *torch.autograd.grad(out[2], views.leaves))
        with torch.autocast("cpu", dtype=BF16):
            out = forward()
        return (*out, *torch.autograd.grad(out[2], views.leaves))

    out = forward()
    plain = (*out, *torch.autograd.grad(out[2], views.leaves))
    names = ("cam", "logits", "loss", "dfeats_orig", "dgrads_orig", "dfeats_aug", "dgrads_aug")
    for inside in ([False, True] if backend != "reference" else [False]):
        cast = run(inside)
        for name, c, p in zip(names, cast, plain, strict=True):
            assert c.dtype == F32, f"{name}: {c.dtype} under autocast"
            assert_close(c, p, 1e-5, atol=1e-7, what=f"{name} under autocast (backward inside: {inside})")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_model_under_autocast(backend):
    """A bf16 autocast forward (bf16 feats and grads) trains through the ops: float32 loss, finite
    parameter gradients, close to the float32 model's loss."""
    B, h, w, H, W = 4, 7, 7, 28, 28
    model = rs.TinyNet(channels=16, num_classes=5, head="linear")
    x_orig, x_aug = torch.randn(B, 3, h, w), torch.randn(B, 3, h, w)
    mask = random_mask(B, H, W)

    def step():
        model.zero_grad()
        logits_orig, feats_orig = model(x_orig)
        logits_aug, feats_aug = model(x_aug)
        targets = logits_orig.argmax(1)
        grads = [sgc_fast.target_grads(lo, f, targets) for lo, f in ((logits_orig, feats_orig), (logits_aug, feats_aug))]
        loss = sgc_fast.SGCLoss(backend=backend)(feats_orig, grads[0], feats_aug, grads[1], mask)
        return loss, feats_orig.dtype

    loss32, _ = step()
    with torch.autocast("cpu", dtype=BF16):
        loss, feats_dtype = step()
    assert feats_dtype == BF16 and loss.dtype == F32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.conv1.weight.grad.abs().max() > 0
    assert abs(loss.item() - loss32.item()) <= 0.05 * abs(loss32.item())


# ---------------------------------------------------------------------------------------------------------
# Determinism of the cpu backend
# ---------------------------------------------------------------------------------------------------------


def cpu_results(views, neg_cam, neg_mask):
    """Every forward and backward output of the cpu backend on one problem (float32)."""
    out = []
    for kind in ("hires", "grad"):
        loss = sgc_fast.saliency_contrast_loss(*views.leaves, kind=kind, backend="cpu", **views.frame())
        out += [loss, *torch.autograd.grad(loss, views.leaves)]
    compact = views.grads_orig.detach()[:, :, 0, 0].clone().requires_grad_()
    cam = sgc_fast.batched_cam(views.feats_orig, compact[:, :, None, None].expand_as(views.feats_orig), backend="cpu")
    out += [cam, *torch.autograd.grad(cam.square().sum(), (views.feats_orig, compact))]
    cams = [sgc_fast.batched_cam(f.detach(), g.detach(), backend="cpu").requires_grad_()
            for f, g in ((views.feats_orig, views.grads_orig), (views.feats_aug, views.grads_aug))]
    logits = sgc_fast.contrast_logits(*cams, neg_cam=neg_cam, neg_mask=neg_mask if views.mask is not None else None,
                                      self_index=torch.arange(cams[0].shape[0]), backend="cpu", **views.frame())
    finite = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
    out += [logits, *torch.autograd.grad(finite.square().sum(), (*cams, neg_cam))]
    return out


@pytest.mark.parametrize("method", METHODS)
def test_cpu_backend_is_deterministic(method):
    B, K, h, w, H, W = 6, 16, 7, 7, 56, 45
    views = random_views(B, K, h, w, H, W, method, dtype=F32)
    neg_cam = torch.relu(torch.randn(B + 2, h, w) + 0.5).requires_grad_()
    neg_mask = random_mask(B + 2, H, W)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = cpu_results(views, neg_cam, neg_mask)
        again = cpu_results(views, neg_cam, neg_mask)
        torch.set_num_threads(1)
        single = cpu_results(views, neg_cam, neg_mask)
    finally:
        torch.set_num_threads(threads)
    assert len(first) == len(again) == len(single)
    for i, (a, b, c) in enumerate(zip(first, again, single, strict=True)):
        assert torch.equal(a, b), f"output {i} differs run to run"
        assert torch.equal(a, c), f"output {i} differs between 2 threads and 1 thread"


# ---------------------------------------------------------------------------------------------------------
# L2 consistency baseline
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hires", "grad"])
@pytest.mark.parametrize("method", ["plain", *METHODS])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_l2_consistency_matches_mse(backend, method, kind):
    views = random_views(3, 6, 5, 3, 33, 17, "plain" if method == "plain" else method)
    if method in ("sgc", "both"):
        views.mask[1] = False  # an empty mask: a_hat = 0 there
    module = sgc_fast.L2ConsistencyLoss(size=views.size, kind=kind, backend=backend)
    loss = module(*views.leaves, mask=views.mask, crop=views.crop, flip=views.flip)
    grads = torch.autograd.grad(loss, views.leaves)
    o = views.as_double()
    want = rs.l2_consistency(*o.leaves, kind=kind, **o.frame())
    want_grads = torch.autograd.grad(want, o.leaves)
    assert_close(loss, want, 1e-9, what="L2 loss")
    for name, g, wg in zip(("feats_orig", "grads_orig", "feats_aug", "grads_aug"), grads, want_grads, strict=True):
        assert torch.isfinite(g).all()
        assert_close(g, wg, 1e-8, atol=1e-16, what=f"L2 d{name}")
