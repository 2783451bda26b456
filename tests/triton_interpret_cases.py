"""Triton kernels under Triton's interpreter, on CPU tensors, against sgc_fast.reference.

Not collected by the normal test run (the name does not start with ``test_``): Triton reads
``TRITON_INTERPRET`` when it is imported, so ``tests/test_triton_interpret.py`` runs this file in its own
process with ``TRITON_INTERPRET=1``. To run it directly::

    TRITON_INTERPRET=1 python -m pytest -q -p no:cacheprovider tests/triton_interpret_cases.py

Covers both ops forward and backward: batched_cam (hires/grad, dense/compact/strided grads, float32,
float64, bfloat16) and contrast_logits (SGC, CGC, both, separate negatives, empty masks, odd shapes with
H x W not a multiple of the tile), the full loss, and the raw sweep against the C++ kernel where it is built.
"""

from __future__ import annotations

import os

import pytest
import torch
from problem import assert_close, random_crop, random_mask

import sgc_fast
from sgc_fast import fused, ops, reference

if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip("needs TRITON_INTERPRET=1 (run through tests/test_triton_interpret.py)", allow_module_level=True)
pytest.importorskip("triton")

import sgc_fast.triton as sgc_triton  # noqa: E402
from sgc_fast.triton import backend as triton_backend  # noqa: E402

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
#: relative tolerance (to the largest magnitude) against the reference computed in the same precision
RTOL = {F32: 2e-5, F64: 1e-12, BF16: 1e-2}
#: (B, h, w, H, W): odd batches, 7x7 and 5x3 grids, maps that are not multiples of the 16-pixel tile
CONTRAST_SHAPES = [(3, 7, 7, 20, 23), (2, 5, 3, 17, 13), (5, 5, 3, 9, 31)]


def test_available_under_interpreter():
    assert sgc_triton.INTERPRET
    assert sgc_triton.unavailable_reason("cpu") is None
    assert ops.explain_backends("cpu")["triton"] == "ok"


# ----------------------------------------------------------------------------------------------------------------
# batched_cam
# ----------------------------------------------------------------------------------------------------------------


def _cam_inputs(B, K, h, w, dtype):
    feats = torch.rand(B, K, h, w).to(dtype).requires_grad_()
    grads = (torch.randn(B, K, h, w) + 0.1).to(dtype).requires_grad_()
    return feats, grads


def _check_cam(feats, grads, kind, grads_ref=None, dtype=F32):
    """Forward and backward of the triton batched_cam against the reference on the same values."""
    cam = sgc_fast.batched_cam(feats, grads, kind, backend="triton")
    want = reference.batched_cam(feats, grads if grads_ref is None else grads_ref, kind)
    assert cam.dtype == (F64 if dtype == F64 else F32)
    assert_close(cam, want, RTOL[F64 if dtype == F64 else F32], what=f"{kind} cam")
    g = torch.randn_like(cam)
    got = torch.autograd.grad(cam, (feats, grads), g)
    exp = torch.autograd.grad(want, (feats, grads), g)
    for name, a, e in zip(("dfeats", "dgrads"), got, exp, strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape, f"{name}: {a.dtype} {list(a.shape)}"
        assert_close(a, e, RTOL[dtype], atol=1e-6 if dtype == BF16 else 0.0, what=f"{kind} {name}")


@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("kind", ["hires", "grad"])
@pytest.mark.parametrize("shape", [(2, 5, 5, 3), (3, 150, 7, 7)], ids=lambda s: "x".join(map(str, s)))
def test_batched_cam_dense(shape, kind, dtype):
    feats, grads = _cam_inputs(*shape, dtype)
    _check_cam(feats, grads, kind, dtype=dtype)


@pytest.mark.parametrize("kind", ["hires", "grad"])
def test_batched_cam_head_grads_compact(kind):
    """The stride-0 head_grads view takes the compact path: the gradient lands in weight, [C, K]."""
    B, K, h, w, C = 3, 70, 7, 7, 5
    feats = torch.rand(B, K, h, w, requires_grad=True)
    weight = torch.randn(C, K, requires_grad=True)
    targets = torch.tensor([4, 0, 4])
    cam = sgc_fast.batched_cam(feats, sgc_fast.head_grads(weight, feats, targets), kind, backend="triton")
    want = reference.batched_cam(feats, sgc_fast.head_grads(weight, feats, targets), kind)
    assert_close(cam, want, RTOL[F32], what="cam")
    g = torch.randn_like(cam)
    got = torch.autograd.grad(cam, (feats, weight), g)
    exp = torch.autograd.grad(want, (feats, weight), g)
    for name, a, e in zip(("dfeats", "dweight"), got, exp, strict=True):
        assert_close(a, e, RTOL[F32], what=name)


def test_batched_cam_compact_backward_is_compact():
    feats = torch.rand(2, 9, 5, 3, requires_grad=True)
    alpha = torch.randn(2, 9, requires_grad=True)
    cam = triton_backend.batched_cam(feats, alpha, "hires")
    d_feats, d_alpha = torch.autograd.grad(cam.sum(), (feats, alpha))
    assert d_alpha.shape == (2, 9)
    want = reference.batched_cam(feats, alpha[:, :, None, None].expand_as(feats), "hires")
    exp = torch.autograd.grad(want.sum(), (feats, alpha))
    assert_close(d_feats, exp[0], RTOL[F32], what="dfeats")
    assert_close(d_alpha, exp[1], RTOL[F32], what="dalpha")


@pytest.mark.parametrize("kind", ["hires", "grad"])
def test_batched_cam_strided(kind):
    """channels-last feats, permuted grads, a non-collapsible spatial slice; gradients keep dense layouts."""
    B, K, h, w = 3, 40, 7, 7
    feats = torch.rand(B, K, h, w).to(memory_format=torch.channels_last).requires_grad_()
    grads = torch.randn(B, h, w, K).permute(0, 3, 1, 2).requires_grad_()
    _check_cam(feats, grads, kind)
    big = torch.rand(B, K, h, w + 4, requires_grad=True)
    feats2 = big[:, :, :, 2 : 2 + w]
    grads2 = torch.randn(K, B, h, w).transpose(0, 1).requires_grad_()
    cam = sgc_fast.batched_cam(feats2, grads2, kind, backend="triton")
    want = reference.batched_cam(feats2, grads2, kind)
    assert_close(cam, want, RTOL[F32], what="cam")
    g = torch.randn_like(cam)
    got = torch.autograd.grad(cam, (big, grads2), g)
    for a, e in zip(got, torch.autograd.grad(want, (big, grads2), g), strict=True):
        assert_close(a, e, RTOL[F32], what="strided grad")


def test_batched_cam_expanded_grads_requiring_grad():
    """A stride-0 grads view of a larger tensor (not a head_grads view): the general path, full-size dgrads."""
    feats = torch.rand(2, 6, 5, 3, requires_grad=True)
    big = torch.randn(2, 6, 3, requires_grad=True)
    grads = big[:, :, :1, None].expand(2, 6, 5, 3)
    cam = sgc_fast.batched_cam(feats, grads, "hires", backend="triton")
    want = reference.batched_cam(feats, grads, "hires")
    assert_close(cam, want, RTOL[F32], what="cam")
    g = torch.randn_like(cam)
    got = torch.autograd.grad(cam, (feats, big), g)
    for a, e in zip(got, torch.autograd.grad(want, (feats, big), g), strict=True):
        assert_close(a, e, RTOL[F32], what="grad")


# ----------------------------------------------------------------------------------------------------------------
# contrast_logits
# ----------------------------------------------------------------------------------------------------------------


def _cams(n, h, w, dtype):
    c = torch.rand(n, h, w, dtype=F64)
    c[c < 0.2] = 0  # zero cells, as after a relu
    return c.to(dtype).requires_grad_()


def _check_contrast(cam_orig, cam_aug, dtype, **kw):
    """Logits and gradients (w.r.t. both CAMs and the negatives) of the triton backend vs the reference."""
    got = sgc_fast.contrast_logits(cam_orig, cam_aug, backend="triton", **kw)
    want = reference.contrast_logits(cam_orig, cam_aug, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert_close(got, want, RTOL[dtype], atol=RTOL[dtype] * 1e-2, what="logits")
    leaves = [cam_orig, cam_aug] + ([kw["neg_cam"]] if kw.get("neg_cam") is not None else [])
    g = torch.randn_like(want).masked_fill(torch.isinf(want), 0.0)
    got_g = torch.autograd.grad(got, leaves, g)
    want_g = torch.autograd.grad(want, leaves, g)
    if dtype == F32:
        # Some random problems are ill-conditioned (a crop of 1-2 pixels makes the warped map nearly constant, and a
        # gradient that is ~0 comes out of cancelling large terms): there every float32 implementation, the reference
        # too, is off by more than 20 ulp of the largest gradient. Judge the kernels against the float64 truth, with
        # room for the float32 reference's own error on this problem.
        leaves64 = [t.detach().double().requires_grad_() for t in leaves]
        kw64 = {**kw, "neg_cam": leaves64[2]} if len(leaves) > 2 else kw
        want64 = reference.contrast_logits(leaves64[0], leaves64[1], **kw64)
        truth = torch.autograd.grad(want64, leaves64, g.double())
    for k, (name, a, e) in enumerate(zip(("dcam_orig", "dcam_aug", "dneg_cam")[: len(leaves)], got_g, want_g,
                                         strict=True)):
        assert a.dtype == e.dtype
        if dtype == F32:
            ref_err = (e.double() - truth[k]).abs().max().item()
            assert_close(a, truth[k].to(a.dtype), 20 * RTOL[dtype], atol=8 * ref_err, what=name)
        else:
            assert_close(a, e, 20 * RTOL[dtype], what=name)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("method", ["sgc", "cgc", "both"])
@pytest.mark.parametrize("shape", CONTRAST_SHAPES, ids=lambda s: "B{}-{}x{}-{}x{}".format(*s))
def test_contrast_logits(shape, method, dtype):
    B, h, w, H, W = shape
    mask = random_mask(B, H, W) if method in ("sgc", "both") else None
    crop, flip = random_crop(B, H, W) if method in ("cgc", "both") else (None, None)
    _check_contrast(_cams(B, h, w, dtype), _cams(B, h, w, dtype), dtype, mask=mask, crop=crop, flip=flip,
                    size=(H, W))


@pytest.mark.parametrize("B,N", [(2, 5), (3, 3), (1, 4)])
def test_contrast_logits_separate_negatives(B, N):
    h, w, H, W = 5, 3, 17, 13
    mask, neg_mask = random_mask(B, H, W), random_mask(N, H, W)
    self_index = torch.randint(-1, N, (B,))
    _check_contrast(_cams(B, h, w, F32), _cams(B, h, w, F32), F32, mask=mask, size=(H, W),
                    neg_cam=_cams(N, h, w, F32), neg_mask=neg_mask, self_index=self_index)


@pytest.mark.parametrize("separate", [False, True])
def test_contrast_logits_several_blocks(separate):
    """More maps than one interpreter tile block (16): off-diagonal and mirrored Gram blocks, column loops."""
    B, N, h, w, H, W = 20, 18, 5, 3, 9, 11
    kw = dict(mask=random_mask(B, H, W), size=(H, W))
    if separate:
        kw.update(neg_cam=_cams(N, h, w, F32), neg_mask=random_mask(N, H, W), self_index=torch.arange(B) % (N + 1) - 1)
    crop, flip = random_crop(B, H, W)
    _check_contrast(_cams(B, h, w, F32), _cams(B, h, w, F32), F32, crop=crop, flip=flip, **kw)


def test_contrast_logits_separate_negatives_with_crop_float64():
    B, N, h, w, H, W = 3, 4, 7, 7, 20, 23
    crop, flip = random_crop(B, H, W)
    _check_contrast(_cams(B, h, w, F64), _cams(B, h, w, F64), F64, mask=random_mask(B, H, W), crop=crop, flip=flip,
                    size=(H, W), neg_cam=_cams(N, h, w, F64), neg_mask=random_mask(N, H, W),
                    self_index=torch.tensor([2, -1, 0]))


def test_contrast_logits_mask_layouts_and_empty_mask():
    """uint8, float and transposed (non-contiguous) masks; an all-zero mask row gives finite logits."""
    B, h, w, H, W = 3, 7, 7, 19, 21
    mask = random_mask(B, W, H).transpose(1, 2)  # strides (W*H, 1, H)
    mask[1] = False
    cam_orig, cam_aug = _cams(B, h, w, F32), _cams(B, h, w, F32)
    _check_contrast(cam_orig, cam_aug, F32, mask=mask, size=(H, W))
    for m in (mask.to(torch.uint8), mask.to(F32)):
        got = sgc_fast.contrast_logits(cam_orig, cam_aug, mask=m, size=(H, W), backend="triton")
        assert torch.isfinite(got).all()
        assert_close(got, reference.contrast_logits(cam_orig, cam_aug, mask=mask, size=(H, W)), RTOL[F32])


def test_contrast_logits_zero_cam():
    """An all-zero CAM (every pixel eps after normalisation) stays finite forward and backward."""
    B, h, w, H, W = 3, 5, 3, 17, 13
    cam_aug = _cams(B, h, w, F32)
    with torch.no_grad():
        cam_aug[0] = 0
    _check_contrast(_cams(B, h, w, F32), cam_aug, F32, mask=random_mask(B, H, W), size=(H, W))


def test_contrast_gradcheck_float64():
    """Numerical gradients of the masked, cropped op (small, float64)."""
    B, h, w, H, W = 2, 3, 2, 7, 5
    mask = random_mask(B, H, W)
    crop, flip = random_crop(B, H, W)

    def f(co, ca):
        return sgc_fast.contrast_logits(co, ca, mask=mask, crop=crop, flip=flip, size=(H, W), backend="triton")

    assert torch.autograd.gradcheck(f, (_cams(B, h, w, F64), _cams(B, h, w, F64)), fast_mode=True)


@pytest.mark.parametrize("method", ["sgc", "both"])
def test_full_loss_float64(method):
    """saliency_contrast_loss through both triton ops, gradients w.r.t. feats and grads of both views."""
    B, K, h, w, H, W = 3, 8, 7, 7, 24, 20
    leaves = [t for _ in range(2) for t in _cam_inputs(B, K, h, w, F64)]
    mask = random_mask(B, H, W) if method in ("sgc", "both") else None
    crop, flip = random_crop(B, H, W) if method in ("cgc", "both") else (None, None)
    kw = dict(mask=mask, crop=crop, flip=flip, size=(H, W))
    loss = sgc_fast.saliency_contrast_loss(*leaves, backend="triton", **kw)
    want = reference.saliency_contrast_loss(*leaves, **kw)
    assert_close(loss, want, RTOL[F64], what="loss")
    for a, e in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(want, leaves), strict=True):
        assert_close(a, e, 1e-10, atol=1e-16, what="leaf grad")


# ----------------------------------------------------------------------------------------------------------------
# The raw sweep against the C++ kernel (same contract)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(ops._EXT_ERROR is not None, reason="C++ extension not built")
@pytest.mark.parametrize("separate", [False, True])
def test_sweep_matches_cpp(separate):
    from sgc_fast import contrast
    from sgc_fast.triton.contrast_sweep_kernel import contrast_sweep, contrast_sweep_backward

    B, N, h, w, H, W = 3, 4, 7, 7, 20, 23
    crop, flip = random_crop(B, H, W)
    neg = torch.rand(N, h, w, dtype=F64) if separate else None
    pb = contrast.prepare(torch.rand(B, h, w, dtype=F64), torch.rand(B, h, w, dtype=F64), neg, crop, flip, (H, W),
                          1e-8)
    mask = random_mask(B, H, W).view(torch.uint8)
    neg_mask = random_mask(N, H, W).view(torch.uint8) if separate else None
    args = fused.sweep_args(pb, mask, neg_mask, F64)
    stats = contrast_sweep(*args)
    want = torch.ops.sgc_fast.contrast_sweep(*args)
    for name, a, e in zip(("gram", "pos", "norm_aug", "norm_orig", "norm_neg"), stats, want, strict=True):
        assert_close(a, e, 1e-13, what=name)
    NQ = N if separate else B
    coefs = contrast.coefficients(stats, separate, torch.randn(B, 1 + (N if separate else B - 1), dtype=F64),
                                  None, 0.5)
    assert NQ == stats[0].shape[1]
    for name, a, e in zip(("grad_aug", "grad_orig", "grad_neg"), contrast_sweep_backward(*args, *coefs),
                          torch.ops.sgc_fast.contrast_sweep_backward(*args, *coefs), strict=True):
        assert_close(a, e, 1e-12, what=name)


def test_sweep_empty_batch_with_negatives():
    """B = 0 rows, N = 2 separate negatives: empty stats but the negatives' squared norms."""
    from sgc_fast import contrast
    from sgc_fast.triton.contrast_sweep_kernel import contrast_sweep

    h, w, H, W = 5, 3, 11, 9
    e = torch.empty(0, h, w, dtype=F64)
    pb = contrast.prepare(e, e, torch.rand(2, h, w, dtype=F64), None, None, (H, W), 1e-8)
    args = fused.sweep_args(pb, torch.zeros(0, H, W, dtype=torch.uint8), random_mask(2, H, W).view(torch.uint8), F64)
    got, want = contrast_sweep(*args), torch.ops.sgc_fast.contrast_sweep(*args)
    for name, a, b in zip(("gram", "pos", "norm_aug", "norm_orig", "norm_neg"), got, want, strict=True):
        assert a.shape == b.shape, name
        assert_close(a, b, 1e-13, what=name)
    assert len({t.data_ptr() for t in got if t.numel()}) == sum(1 for t in got if t.numel())


@pytest.mark.parametrize("dot", ["tf32x3", "tf32"])
def test_sweep_dot_precision_opt_in(monkeypatch, dot):
    """SGC_FAST_TRITON_DOT reaches the float32 kernels (the interpreter computes the dots in float32 whatever the
    precision: the values must match IEEE); a value that is no tl.dot precision is refused by name."""
    from sgc_fast import contrast
    from sgc_fast.triton.contrast_sweep_kernel import contrast_sweep

    B, h, w, H, W = 3, 7, 7, 20, 23
    pb = contrast.prepare(torch.rand(B, h, w), torch.rand(B, h, w), None, None, None, (H, W), 1e-8, F32)
    args = fused.sweep_args(pb, random_mask(B, H, W).view(torch.uint8), None, F32)
    want = contrast_sweep(*args)
    monkeypatch.setenv("SGC_FAST_TRITON_DOT", dot)
    for a, e in zip(contrast_sweep(*args), want, strict=True):
        assert_close(a, e, 1e-6, what=dot)
    monkeypatch.setenv("SGC_FAST_TRITON_DOT", "fp8")
    with pytest.raises(ValueError, match="SGC_FAST_TRITON_DOT"):
        contrast_sweep(*args)


# ----------------------------------------------------------------------------------------------------------------
# The float64 glue in Triton (sgc_fast/triton/contrast_glue_kernel.py) against the PyTorch glue
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_glue_blocks(monkeypatch):
    """16-element blocks, so that rows and columns longer than 16 take several loop iterations."""
    from sgc_fast.triton import contrast_glue_kernel

    monkeypatch.setattr(contrast_glue_kernel, "BLOCK", 16)
    return contrast_glue_kernel


def _glue_problem(B, N, degenerate):
    from sgc_fast import contrast

    co, ca = torch.rand(B, 5, 3, dtype=F64), torch.rand(B, 5, 3, dtype=F64)
    neg = torch.rand(N, 5, 3, dtype=F64) if N else None
    pb = contrast.prepare(co, ca, neg, None, None, (13, 9), 1e-8)
    stats = [s.clone() for s in contrast.lowres_stats(pb)]
    if degenerate:  # squared norms at and below the normalisation floor
        stats[2][0] = 0.0
        stats[3][-1] = -1e-30
        if N:
            stats[4][-1] = 0.0
        else:
            stats[4] = stats[2]
    return pb, stats


@pytest.mark.parametrize("B,N,self_index,degenerate", [
    (3, 0, False, False), (20, 0, False, True), (4, 5, False, True), (3, 18, True, False), (19, 6, True, True),
])
def test_triton_glue_matches_torch_glue(small_glue_blocks, B, N, self_index, degenerate):
    from sgc_fast import contrast

    tg, ref = small_glue_blocks, contrast.TorchGlue
    pb, stats = _glue_problem(B, N, degenerate)
    idx = torch.randint(-1, N, (B,)) if self_index else None
    for dtype in (F32, F64):
        logits, packed = tg.epilogue(stats, idx, pb.separate, 0.3, dtype)
        want, want_packed = ref.epilogue(stats, idx, pb.separate, 0.3, dtype)
        assert logits.dtype == dtype and torch.equal(torch.isinf(logits), torch.isinf(want))
        fin = torch.isfinite(want)
        assert_close(logits[fin], want[fin], 1e-13 if dtype == F64 else 1e-6, what="logits")
        assert torch.equal(packed, want_packed)
    for gdtype in (F32, F64):
        grad = torch.randn(B, 1 + (N if N else B - 1), dtype=gdtype)
        got = tg.coefficients(packed, grad, idx, pb.separate, 0.7)
        want = ref.coefficients(packed, grad, idx, pb.separate, 0.7)
        for name, a, e in zip(("c_aa", "c_aq", "c_qa", "c_qq", "c_ap", "c_pp"), got, want, strict=True):
            assert a.shape == e.shape and a.dtype == F64, name
            assert_close(a, e, 1e-12, atol=1e-12 * float(e.abs().max()) if e.numel() else 0.0, what=name)
            zero = e == 0
            assert torch.equal(torch.signbit(a[zero]), torch.signbit(e[zero])), f"{name}: sign of zeros"


def test_triton_glue_empty_batch_with_negatives(small_glue_blocks):
    from sgc_fast import contrast

    nq, e = torch.rand(3, dtype=F64), torch.empty(0, dtype=F64)
    stats = [torch.empty(0, 3, dtype=F64), e, e, e, nq]
    logits, packed = small_glue_blocks.epilogue(stats, None, True, 0.5, F32)
    assert logits.shape == (0, 4) and torch.equal(packed, nq)
    got = small_glue_blocks.coefficients(packed, torch.empty(0, 4), None, True, 0.5)
    want = contrast.TorchGlue.coefficients(packed, torch.empty(0, 4), None, True, 0.5)
    for a, w in zip(got, want, strict=True):
        assert a.shape == w.shape and torch.equal(a, w) and torch.equal(torch.signbit(a), torch.signbit(w))


@pytest.mark.parametrize("cam_dtype", [BF16, F32, F64], ids=str)
def test_triton_glue_normalise_unnormalise(small_glue_blocks, cam_dtype):
    from sgc_fast import contrast

    tg, ref = small_glue_blocks, contrast.TorchGlue
    cam = torch.rand(3, 7, 5, dtype=F64).to(cam_dtype)  # 35 cells: three 16-element blocks
    weight = torch.rand(7, 5, dtype=F64)
    for ct_dtype in (F32, F64):
        ct, total = tg.normalise(cam, weight, 1e-8, ct_dtype)
        want_ct, want_total = ref.normalise(cam, weight, 1e-8, ct_dtype)
        assert ct.dtype == ct_dtype
        assert_close(total, want_total, 1e-14, what="total")
        assert_close(ct, want_ct, 1e-14 if ct_dtype == F64 else 1e-7, what="ct")
    g = torch.randn(3, 7, 5, dtype=F64)
    got = tg.unnormalise(g, cam, want_total, weight)
    want = ref.unnormalise(g, cam, want_total, weight)
    assert got.dtype == cam_dtype
    # bfloat16: one unit in the last place (the interpreter rounds float32 -> bfloat16 towards zero)
    assert_close(got, want, {F64: 1e-13, F32: 1e-6, BF16: 8e-3}[cam_dtype], atol=1e-13, what="d_cam")


@pytest.mark.parametrize("method", ["sgc", "sgc-neg", "cgc"])
def test_contrast_logits_with_triton_glue(monkeypatch, method):
    """The whole op on the triton backend with SGC_FAST_GLUE=triton against the reference."""

    monkeypatch.setenv("SGC_FAST_GLUE", "triton")
    assert fused.glue_kind(torch.device("cpu")) == "triton"
    B, h, w, H, W = 3, 5, 3, 17, 13
    kw = dict(size=(H, W))
    if method != "cgc":
        kw["mask"] = random_mask(B, H, W)
    else:
        kw["crop"], kw["flip"] = random_crop(B, H, W)
    if method == "sgc-neg":
        kw["neg_cam"] = _cams(4, h, w, F64)
        kw["neg_mask"] = random_mask(4, H, W)
        kw["self_index"] = torch.tensor([1, -1, 3])
    _check_contrast(_cams(B, h, w, F64), _cams(B, h, w, F64), F64, **kw)


@pytest.mark.parametrize("N,crop", [(0, True), (3, True), (0, False), (2, False)])
def test_triton_lowres_matches_torch(N, crop):
    """Warp matrices and the unmasked closed forms (stats, gradients with and without the forward's products)."""
    from sgc_fast import contrast, interp
    from sgc_fast.triton import contrast_lowres_kernel as lk

    B, h, w, H, W = 4, 5, 3, 29, 13
    box, flip = random_crop(B, H, W)
    vy, vx = lk.warp_matrices(box, flip, (H, W), (h, w))
    ey, ex = interp.warp_matrices(box, flip, (H, W), (h, w), F64)
    assert_close(vy, ey, 2e-15, atol=2e-15, what="vy")
    assert_close(vx, ex, 2e-15, atol=2e-15, what="vx")
    co, ca = torch.rand(B, h, w, dtype=F64), torch.rand(B, h, w, dtype=F64)
    neg = torch.rand(N, h, w, dtype=F64) if N else None
    frame = (box, flip) if crop else (None, None)
    pb_t = contrast.prepare(co, ca, neg, *frame, (H, W), 1e-8)
    pb = contrast.prepare(co, ca, neg, *frame, (H, W), 1e-8)
    for name, a, e in zip(("gram", "pos", "na", "np", "nq"), lk.lowres_stats(pb), contrast.lowres_stats(pb_t),
                          strict=True):
        assert_close(a, e, 1e-13, what=name)
    coefs = [torch.randn(B, B, dtype=F64), torch.randn(B, N, dtype=F64), torch.randn(N, B, dtype=F64),
             torch.randn(N, dtype=F64)] + [torch.randn(B, dtype=F64) for _ in range(3)]
    want = contrast.lowres_grads(pb_t, coefs)
    for p in (pb, contrast.prepare(co, ca, neg, *frame, (H, W), 1e-8)):  # with the forward's products, without
        for name, a, e in zip(("g_aug", "g_orig", "g_neg"), lk.lowres_grads(p, coefs), want, strict=True):
            assert a.shape == e.shape
            assert_close(a, e, 1e-13, atol=1e-300, what=name)
