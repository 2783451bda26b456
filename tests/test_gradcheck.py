"""float64 finite-difference checks of both ops on both CPU backends, and torch.library.opcheck of the
registered ops.

CAM values are kept away from 0 (rand + 0.1 inputs): at an all-zero CAM the sum-normalisation has slope
1/eps, which finite differences cannot follow, and the relu has a kink at 0.
"""

from __future__ import annotations

import pytest
import torch
from problem import random_crop, random_mask

import sgc_fast
from sgc_fast.ops import _contrast_logits_op

BACKENDS = ("reference", "cpu")
F64 = torch.float64


def positive(*shape, dtype=F64):
    return (torch.rand(*shape, dtype=dtype) + 0.1).requires_grad_()


# ---------------------------------------------------------------------------------------------------------
# batched_cam
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grads_form", ["dense", "compact", "expanded"])
@pytest.mark.parametrize("kind", ["hires", "grad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_cam_gradcheck(backend, kind, grads_form):
    B, K, h, w = 2, 3, 4, 3
    feats = positive(B, K, h, w)
    if grads_form == "dense":
        grads = positive(B, K, h, w)

        def as_grads(g):
            return g
    else:  # the head path: a [B, K] gradient, passed as is or as head_grads' stride-0 view
        grads = positive(B, K)

        def as_grads(g):
            return g if grads_form == "compact" else g[:, :, None, None].expand(B, K, h, w)

    def fn(f, g):
        return sgc_fast.batched_cam(f, as_grads(g), kind, backend=backend)

    assert (fn(feats, grads) > 0).all()
    assert torch.autograd.gradcheck(fn, (feats, grads))


@pytest.mark.parametrize("kind", ["hires", "grad"])
def test_batched_cam_gradgradcheck_reference(kind):
    """The reference is plain PyTorch: differentiable to any order."""
    feats, grads = positive(2, 3, 3, 2), positive(2, 3, 3, 2)
    assert torch.autograd.gradgradcheck(lambda f, g: sgc_fast.batched_cam(f, g, kind, backend="reference"),
                                        (feats, grads))


# ---------------------------------------------------------------------------------------------------------
# contrast_logits
# ---------------------------------------------------------------------------------------------------------

CASES = ["plain", "sgc", "cgc", "both", "separate", "separate_sgc", "separate_both"]


def contrast_case(case, B=3, N=4, h=4, w=3, H=11, W=9):
    """(differentiable inputs, keyword arguments) of one contrast_logits configuration."""
    inputs = [positive(B, h, w), positive(B, h, w)]
    kw = dict(size=(H, W), temperature=0.7)
    if "sgc" in case or "both" in case:
        kw["mask"] = random_mask(B, H, W)
    if "cgc" in case or "both" in case:
        kw["crop"], kw["flip"] = random_crop(B, H, W)
        kw["crop"][0] = torch.tensor([2, 1, H - 2, 1])  # a one-column crop
        kw["flip"][0] = True
    if case.startswith("separate"):
        inputs.append(positive(N, h, w))
        kw["self_index"] = torch.tensor([1, -1, 3])[:B]
        if "mask" in kw:
            kw["neg_mask"] = random_mask(N, H, W)
    return inputs, kw


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_contrast_logits_gradcheck(backend, case):
    inputs, kw = contrast_case(case)

    def fn(cam_orig, cam_aug, neg_cam=None):
        logits = sgc_fast.contrast_logits(cam_orig, cam_aug, neg_cam=neg_cam, backend=backend, **kw)
        return torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)

    assert fn(*inputs).dtype == F64
    assert torch.autograd.gradcheck(fn, tuple(inputs))


def test_contrast_logits_gradgradcheck_reference():
    inputs, kw = contrast_case("both", B=2, h=3, w=2, H=7, W=5)
    assert torch.autograd.gradgradcheck(
        lambda a, b: sgc_fast.contrast_logits(a, b, backend="reference", **kw), tuple(inputs)
    )


# ---------------------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------------------


def batched_cam_samples():
    B, K, h, w = 3, 5, 4, 3
    f32 = dict(dtype=torch.float32)
    yield "dense", (positive(B, K, h, w), positive(B, K, h, w), "hires")
    yield "dense_grad_kind", (positive(B, K, h, w), positive(B, K, h, w), "grad")
    yield "compact", (positive(B, K, h, w), positive(B, K), "hires")
    yield "float32", (positive(B, K, h, w, **f32), positive(B, K, h, w, **f32), "grad")
    cl = torch.rand(B, K, h, w).to(memory_format=torch.channels_last).requires_grad_()
    yield "channels_last", (cl, positive(B, K, h, w, **f32), "hires")
    yield "bf16_no_grad", (torch.rand(B, K, h, w, dtype=torch.bfloat16), torch.rand(B, K, dtype=torch.bfloat16),
                           "hires")


OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
CAM_SAMPLES = ["dense", "dense_grad_kind", "compact", "float32", "channels_last", "bf16_no_grad"]


@pytest.mark.parametrize("util", OPCHECK_UTILS)
@pytest.mark.parametrize("sample", CAM_SAMPLES)
def test_opcheck_batched_cam(sample, util):
    args = dict(batched_cam_samples())[sample]
    torch.library.opcheck(torch.ops.sgc_fast.batched_cam.default, args, test_utils=util)


def contrast_op_args(case, dtype=F64):
    # a geometry of its own (not the gradcheck tests'): tracing must not share cached state with them
    inputs, kw = contrast_case(case, h=5, w=3, H=13, W=10)
    inputs = [t.detach().to(dtype).requires_grad_() for t in inputs]
    neg_cam = inputs[2] if len(inputs) > 2 else None
    return (inputs[0], inputs[1], kw.get("mask"), kw.get("crop"), kw.get("flip"), neg_cam, kw.get("neg_mask"),
            kw.get("self_index"), list(kw["size"]), float(kw["temperature"]), 1e-8)


CONTRAST_SAMPLES = [("plain", F64), ("sgc", F64), ("cgc", F64), ("both", F64), ("separate", F64),
                    ("separate_sgc", F64), ("sgc", torch.float32), ("separate_both", torch.float32)]


@pytest.mark.parametrize("util", OPCHECK_UTILS)
@pytest.mark.parametrize("case,dtype", CONTRAST_SAMPLES, ids=[f"{c}-{str(d)[6:]}" for c, d in CONTRAST_SAMPLES])
def test_opcheck_contrast_logits(case, dtype, util):
    """The custom op (logits, stats) with its fake kernel and autograd; test_aot_dispatch_dynamic traces
    the backward with fake tensors, as torch.compile would."""
    torch.library.opcheck(_contrast_logits_op, contrast_op_args(case, dtype), test_utils=util)


# ---------------------------------------------------------------------------------------------------------
# torch.compile (what test_aot_dispatch_dynamic checks, end to end)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["compile_first", "eager_first"])
def test_torch_compile_and_eager_agree(order):
    """contrast_logits (cpu backend) forward + backward under torch.compile(backend="aot_eager") gives the
    eager gradients, whichever runs first in the process. Each order uses its own map geometry, so that
    state cached by one call (e.g. interpolation matrices) cannot leak into other tests."""
    B, h, w = 3, 6, 4
    H, W = (19, 15) if order == "compile_first" else (21, 13)
    cams = [positive(B, h, w, dtype=torch.float32) for _ in range(2)]
    mask = random_mask(B, H, W)

    def loss_fn(cam_orig, cam_aug):
        return sgc_fast.contrast_logits(cam_orig, cam_aug, mask=mask, size=(H, W), backend="cpu").square().sum()

    def grads_of(fn):
        return torch.autograd.grad(fn(*cams), cams)

    want = torch.autograd.grad(
        sgc_fast.contrast_logits(*cams, mask=mask, size=(H, W), backend="reference").square().sum(), cams
    )
    compiled = torch.compile(loss_fn, backend="aot_eager")
    try:
        if order == "compile_first":
            got_compiled, got_eager = grads_of(compiled), grads_of(loss_fn)
        else:
            got_eager, got_compiled = grads_of(loss_fn), grads_of(compiled)
    finally:
        torch._dynamo.reset()
    for g_c, g_e, g_w in zip(got_compiled, got_eager, want, strict=True):
        torch.testing.assert_close(g_e, g_w, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g_c, g_w, rtol=1e-4, atol=1e-6)
