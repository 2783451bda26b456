"""The native glue ops (csrc/contrast_glue.h: contrast_normalise, contrast_epilogue, contrast_coefficients,
contrast_unnormalise, warp_matrices, contrast_lowres_stats/grads) and the Triton glue against the plain-PyTorch glue of sgc_fast/contrast.py, which defines them; and the
switch between the two (SGC_FAST_GLUE)."""

from __future__ import annotations

import pytest
import torch
from problem import assert_close, random_mask

import sgc_fast
from sgc_fast import contrast, fused


def _built(device_type: str) -> bool:
    return fused._native_glue_built(device_type)


needs_cpu_glue = pytest.mark.skipif(not _built("cpu"), reason="extension not built")

_GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


#: (glue, device) pairs of the op-level tests; the Triton glue on CPU tensors runs in the interpreter cases.
IMPLS = [
    pytest.param(("native", "cpu"), id="native-cpu", marks=pytest.mark.skipif(not _built("cpu"), reason="no build")),
    pytest.param(("native", "cuda"), id="native-cuda", marks=_GPU + [
        pytest.mark.skipif(not _built("cuda"), reason="sgc_fast._C built without CUDA kernels (FORCE_CUDA=1)"),
    ]),
    pytest.param(("triton", "cuda"), id="triton-cuda", marks=_GPU + [
        pytest.mark.skipif(not _triton_ok(), reason="triton not importable"),
    ]),
]


def _impl(pair):
    kind, device = pair
    if kind == "native":
        return fused.NativeGlue, device
    from sgc_fast.triton import contrast_glue_kernel

    return contrast_glue_kernel, device


F64 = torch.float64
native = torch.ops.sgc_fast


def _problem(B, N, h=5, w=3, H=19, W=11, dtype=F64, device="cpu"):
    """A real (unmasked) problem and its stats; N = 0: no separate negatives."""
    co, ca = torch.rand(B, h, w, dtype=dtype, device=device), torch.rand(B, h, w, dtype=dtype, device=device)
    neg = torch.rand(N, h, w, dtype=dtype, device=device) if N else None
    pb = contrast.prepare(co, ca, neg, None, None, (H, W), 1e-8)
    return pb, list(contrast.lowres_stats(pb))


def _degenerate(stats, separate):
    """Zero and negative squared norms (below the normalisation's floor) in some rows and columns."""
    gram, pos, na, np_, nq = (s.clone() for s in stats)
    na[0] = 0.0
    np_[-1] = -1e-30
    if separate:
        nq[-1] = 0.0
    else:
        nq = na  # q = a without separate negatives
    return [gram, pos, na, np_, nq]


def _stats_case(B, N, self_index, degenerate, impl):
    """(glue, device, problem, stats, self_index) of one parametrised case."""
    if self_index and not N:
        pytest.skip("self_index needs separate negatives")
    glue, device = _impl(impl)
    pb, stats = _problem(B, N, device=device)
    if degenerate:
        stats = _degenerate(stats, pb.separate)
    idx = torch.randint(-1, N, (B,), device=device) if self_index else None
    return glue, device, pb, stats, idx


CASES = [(2, 0), (5, 0), (4, 3), (3, 7), (37, 0), (33, 70)]  # (B, N); > 32: several lanes per warp on a GPU


@pytest.mark.parametrize("cam_dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("ct_dtype", [torch.float32, F64])
@pytest.mark.parametrize("impl", IMPLS)
def test_normalise(cam_dtype, ct_dtype, impl):
    glue, device = _impl(impl)
    cam = torch.rand(4, 7, 5, device=device).to(cam_dtype)
    weight = torch.rand(7, 5, dtype=F64, device=device)
    ct, total = glue.normalise(cam, weight, 1e-8, ct_dtype)
    expect_total = (cam.to(F64) * weight).sum((1, 2)) + 1e-8
    assert ct.dtype == ct_dtype and total.dtype == F64
    assert_close(total, expect_total, rtol=1e-14, what="total")
    assert_close(ct, (cam.to(F64) / expect_total[:, None, None]).to(ct_dtype), rtol=1e-14 if ct_dtype == F64 else 1e-7,
                 what="ct")


@pytest.mark.parametrize("impl", IMPLS)
def test_normalise_strided(impl):
    glue, device = _impl(impl)
    cam = torch.rand(5, 3, 400, dtype=F64, device=device).transpose(1, 2)  # [5, 400, 3], not contiguous
    weight = torch.rand(400, 3, dtype=F64, device=device)
    ct, total = glue.normalise(cam, weight, 0.5, F64)
    assert_close(total, (cam * weight).sum((1, 2)) + 0.5, rtol=1e-14)
    assert_close(ct, cam / total[:, None, None], rtol=1e-14)


@pytest.mark.parametrize("degenerate", [False, True])
@pytest.mark.parametrize("self_index", [False, True])
@pytest.mark.parametrize("B,N", CASES)
@pytest.mark.parametrize("out_dtype", [torch.float32, F64])
@pytest.mark.parametrize("impl", IMPLS)
def test_epilogue(B, N, self_index, degenerate, out_dtype, impl):
    glue, device, pb, stats, idx = _stats_case(B, N, self_index, degenerate, impl)
    logits, packed = glue.epilogue(stats, idx, pb.separate, 0.3, out_dtype)
    expect = contrast.logits_from_stats(stats, pb.separate, idx, 0.3, out_dtype)
    assert logits.dtype == out_dtype and logits.shape == expect.shape
    assert torch.equal(torch.isinf(logits), torch.isinf(expect))
    fin = torch.isfinite(expect)
    assert_close(logits[fin], expect[fin], rtol=1e-13 if out_dtype == F64 else 1e-6, what="logits")
    assert torch.equal(packed, contrast.pack_stats(stats))


@pytest.mark.parametrize("degenerate", [False, True])
@pytest.mark.parametrize("self_index", [False, True])
@pytest.mark.parametrize("B,N", CASES)
@pytest.mark.parametrize("grad_dtype", [torch.float32, F64])
@pytest.mark.parametrize("impl", IMPLS)
def test_coefficients(B, N, self_index, degenerate, grad_dtype, impl):
    glue, device, pb, stats, idx = _stats_case(B, N, self_index, degenerate, impl)
    grad = torch.randn(B, 1 + (N if N else B - 1), dtype=grad_dtype, device=device)
    got = glue.coefficients(contrast.pack_stats(stats), grad, idx, pb.separate, 0.7)
    c_aa, c_aq, c_qa, c_qq, c_ap, c_pa, c_pp = contrast.coefficients(stats, pb.separate, grad, idx, 0.7)
    names = ("c_aa", "c_aq", "c_qa", "c_qq", "c_ap", "c_pp")
    for name, a, e in zip(names, got, (c_aa, c_aq, c_qa, c_qq, c_ap, c_pp), strict=True):
        assert a.dtype == F64 and a.shape == e.shape, name
        assert_close(a, e, rtol=1e-12, atol=1e-12 * float(e.abs().max()) if e.numel() else 0.0, what=name)
        zero = e == 0
        assert torch.equal(torch.signbit(a[zero]), torch.signbit(e[zero])), f"{name}: sign of zeros"
    assert torch.equal(c_pa, c_ap)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_with_negatives(impl):
    """B = 0 rows against N = 3 separate negatives: the packed stats still hold |q|^2, c_qq is written."""
    glue, device = _impl(impl)
    nq = torch.rand(3, dtype=F64, device=device)
    e = torch.empty(0, dtype=F64, device=device)
    stats = [torch.empty(0, 3, dtype=F64, device=device), e, e, e, nq]
    logits, packed = glue.epilogue(stats, None, True, 0.5, torch.float32)
    assert logits.shape == (0, 4) and torch.equal(packed, nq)
    got = glue.coefficients(packed, torch.empty(0, 4, device=device), None, True, 0.5)
    want = contrast.TorchGlue.coefficients(packed, torch.empty(0, 4, device=device), None, True, 0.5)
    for a, w in zip(got, want, strict=True):
        assert a.shape == w.shape and torch.equal(a, w) and torch.equal(torch.signbit(a), torch.signbit(w))


@pytest.mark.parametrize("impl", IMPLS)
def test_coefficients_noncontiguous_grad(impl):
    glue, device = _impl(impl)
    pb, stats = _problem(4, 0, device=device)
    grad = torch.randn(4, 4, dtype=F64, device=device).T  # transposed
    got = glue.coefficients(contrast.pack_stats(stats), grad, None, False, 0.5)
    expect = contrast.coefficients(stats, False, grad, None, 0.5)
    assert_close(got[0], expect[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cam_dtype", [torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("impl", IMPLS)
def test_unnormalise(cam_dtype, impl):
    glue, device = _impl(impl)
    cam = torch.rand(3, 14, 14, device=device).to(cam_dtype)
    weight = torch.rand(14, 14, dtype=F64, device=device)
    total = (cam.to(F64) * weight).sum((1, 2)) + 1e-8
    g = torch.randn(3, 14, 14, dtype=F64, device=device)
    got = glue.unnormalise(g, cam, total, weight)
    expect = contrast.unnormalise_grad(g, cam, total, weight).to(cam_dtype)
    assert got.dtype == cam_dtype
    assert_close(got, expect, rtol=1e-13 if cam_dtype == F64 else 1e-6, atol=1e-13, what="d_cam")


COMBOS = [  # (backend, glue)
    pytest.param(("cpu", "native"), id="cpu-native", marks=pytest.mark.skipif(not _built("cpu"), reason="no build")),
    pytest.param(("cuda", "native"), id="cuda-native", marks=_GPU + [
        pytest.mark.skipif(not _built("cuda"), reason="sgc_fast._C built without CUDA kernels (FORCE_CUDA=1)"),
    ]),
    pytest.param(("triton", "triton"), id="triton-triton", marks=_GPU + [
        pytest.mark.skipif(not _triton_ok(), reason="triton not importable"),
    ]),
]


@pytest.mark.parametrize("method", ["sgc", "cgc", "sgc-neg"])
@pytest.mark.parametrize("combo", COMBOS)
def test_glue_agrees_with_torch_glue(method, combo, monkeypatch):
    """The whole contrast_logits on a fused backend, forward and backward, with a fast glue and with the
    PyTorch glue."""
    backend, kind = combo
    device = "cpu" if backend == "cpu" else "cuda"
    B, h, w, H, W = 4, 5, 3, 21, 13
    dev = torch.device(device)
    co, ca = torch.rand(B, h, w, dtype=F64, device=dev), torch.rand(B, h, w, dtype=F64, device=dev)
    kw = dict(size=(H, W), temperature=0.4, backend=backend)
    if method.startswith("sgc"):
        kw["mask"] = random_mask(B, H, W).to(dev)
    if method == "cgc":
        kw["crop"] = torch.tensor([[0, 0, H, W], [2, 1, 9, 7], [5, 3, 16, 10], [1, 4, 3, 2]], device=dev)
        kw["flip"] = torch.tensor([False, True, False, True], device=dev)
    if method == "sgc-neg":
        kw["neg_cam"] = torch.rand(6, h, w, dtype=F64, device=dev)
        kw["neg_mask"] = random_mask(6, H, W).to(dev)
        kw["self_index"] = torch.tensor([0, -1, 5, 2], device=dev)
    weights = torch.randn(B, B if method != "sgc-neg" else 7, dtype=F64, device=dev)

    def run():
        leaves = [co.clone().requires_grad_(), ca.clone().requires_grad_()]
        extra = dict(kw)
        if "neg_cam" in kw:
            leaves.append(kw["neg_cam"].clone().requires_grad_())
            extra["neg_cam"] = leaves[-1]
        logits = sgc_fast.contrast_logits(leaves[0], leaves[1], **extra)
        fin = torch.isfinite(logits)
        (logits[fin] * weights[fin]).sum().backward()
        return [logits] + [x.grad for x in leaves]

    monkeypatch.setenv("SGC_FAST_GLUE", kind)
    assert fused.glue_kind(dev) == kind
    got = run()
    monkeypatch.setenv("SGC_FAST_GLUE", "torch")
    assert fused.glue_kind(dev) == "torch"
    expect = run()
    for name, a, e in zip(("logits", "d_orig", "d_aug", "d_neg"), got, expect, strict=False):
        fin = torch.isfinite(e)
        assert torch.equal(fin, torch.isfinite(a)), name
        assert_close(a[fin], e[fin], rtol=1e-11, atol=1e-11 * float(e[fin].abs().max().detach()), what=name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("H,W,h,w", [(33, 17, 5, 3), (224, 224, 7, 7), (20, 9, 20, 9), (8, 8, 1, 1)])
def test_warp_matrices(impl, H, W, h, w):
    """The CGC warp matrices entry by entry against the PyTorch form, every crop shape
    from one pixel to the whole map, mirrored or not."""
    from sgc_fast import interp

    glue, device = _impl(impl)
    B = 24
    hh = torch.randint(1, H + 1, (B,))
    ww = torch.randint(1, W + 1, (B,))
    hh[:3], ww[:3] = torch.tensor([1, H, H]), torch.tensor([1, W, 1])
    top = (torch.rand(B) * (H - hh + 1)).floor().long()
    left = (torch.rand(B) * (W - ww + 1)).floor().long()
    crop = torch.stack([top, left, hh, ww], 1).to(device=device, dtype=torch.int32)
    flip = (torch.rand(B) < 0.5).to(device)
    vy, vx = glue.warp_matrices(crop, flip, (H, W), (h, w))
    ey, ex = interp.warp_matrices(crop, flip, (H, W), (h, w), F64)
    assert vy.dtype == vx.dtype == F64 and vy.shape == ey.shape and vx.shape == ex.shape
    # (to rounding: the compilers fuse multiply-adds that PyTorch rounds separately)
    assert_close(vy, ey, rtol=2e-15, atol=2e-15, what="vy")
    assert_close(vx, ex, rtol=2e-15, atol=2e-15, what="vx")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("frame", ["crop", "crop-neg", "plain", "plain-neg", "b1-neg"])
def test_lowres_stats_and_grads(impl, frame):
    """The unmasked closed forms as native ops against contrast.lowres_stats / lowres_grads (same problem)."""
    from problem import random_crop

    glue, device = _impl(impl)
    B = 1 if frame.startswith("b1") else 5
    N = 7 if frame.endswith("neg") else 0
    h, w, H, W = 5, 3, 29, 13
    dev = torch.device(device)
    co, ca = torch.rand(B, h, w, dtype=F64, device=dev), torch.rand(B, h, w, dtype=F64, device=dev)
    neg = torch.rand(N, h, w, dtype=F64, device=dev) if N else None
    crop = flip = None
    if frame.startswith("crop"):
        crop, flip = (t.to(dev) for t in random_crop(B, H, W))
    pb_t = contrast.prepare(co, ca, neg, crop, flip, (H, W), 1e-8)  # the PyTorch glue
    pb_n = contrast.prepare(co, ca, neg, crop, flip, (H, W), 1e-8, torch.float64, glue)
    want = contrast.TorchGlue.lowres_stats(pb_t)
    got = glue.lowres_stats(pb_n)
    for name, a, e in zip(("gram", "pos", "norm_aug", "norm_orig", "norm_neg"), got, want, strict=True):
        assert a.shape == e.shape and a.dtype == F64, name
        assert_close(a, e, rtol=1e-13, what=name)
    NQ = N or B
    coefs = [torch.randn(B, B, dtype=F64, device=dev), torch.randn(B, N, dtype=F64, device=dev),
             torch.randn(N, B, dtype=F64, device=dev), torch.randn(N, dtype=F64, device=dev)]
    coefs += [torch.randn(B, dtype=F64, device=dev) for _ in range(3)]
    want_g = contrast.TorchGlue.lowres_grads(pb_t, coefs)
    for pb in (pb_n, contrast.prepare(co, ca, neg, crop, flip, (H, W), 1e-8, torch.float64, glue)):  # memo / none
        got_g = glue.lowres_grads(pb, coefs)
        for name, a, e in zip(("g_aug", "g_orig", "g_neg"), got_g, want_g, strict=True):
            assert a.shape == e.shape and a.dtype == F64, name
            assert_close(a, e, rtol=1e-13, atol=1e-300, what=name)
    assert NQ == want[0].shape[1]


@needs_cpu_glue
def test_errors_name_the_argument():
    cam = torch.rand(2, 3, 3)
    with pytest.raises(RuntimeError, match="weight: expected float64"):
        native.contrast_normalise(cam, torch.rand(3, 3), 1e-8, torch.float32)
    with pytest.raises(RuntimeError, match="dtype: expected float32 or float64"):
        native.contrast_normalise(cam, torch.rand(3, 3, dtype=F64), 1e-8, torch.float16)
    _, stats = _problem(3, 0)
    with pytest.raises(RuntimeError, match="grad_logits: expected"):
        native.contrast_coefficients(contrast.pack_stats(stats), torch.randn(3, 5), None, False, 0.5)
    with pytest.raises(RuntimeError, match="stats: expected float64"):
        native.contrast_coefficients(contrast.pack_stats(stats)[1:], torch.randn(3, 3), None, False, 0.5)
    with pytest.raises(RuntimeError, match="self_index: given without separate negatives"):
        native.contrast_epilogue(*stats, torch.zeros(3, dtype=torch.long), False, 0.5, torch.float32)
    with pytest.raises(RuntimeError, match="crop: expected an integer"):
        native.warp_matrices(torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool), 8, 8, 2, 2)
    with pytest.raises(RuntimeError, match="flip: expected a bool"):
        native.warp_matrices(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2), 8, 8, 2, 2)
    with pytest.raises(RuntimeError, match="grad_ct: expected float64"):
        native.contrast_unnormalise(torch.rand(2, 3, 3), cam, torch.ones(2, dtype=F64), torch.ones(3, 3, dtype=F64))


@needs_cpu_glue
def test_opcheck():
    """Schemas, fake kernels and dispatch of the four ops (torch.library.opcheck)."""
    pb, stats = _problem(3, 4)
    cam = torch.rand(3, 5, 3)
    torch.library.opcheck(native.contrast_normalise, (cam, pb.weight, 1e-8, torch.float32))
    torch.library.opcheck(native.contrast_epilogue, (*stats, torch.tensor([0, -1, 3]), True, 0.5, torch.float32))
    grad = torch.randn(3, 5)
    torch.library.opcheck(native.contrast_coefficients, (contrast.pack_stats(stats), grad, None, True, 0.5))
    g = torch.randn(3, 5, 3, dtype=F64)
    torch.library.opcheck(native.contrast_unnormalise, (g, cam, pb.sum_aug, pb.weight))
    crop = torch.tensor([[0, 0, 19, 11], [3, 2, 5, 4], [1, 1, 1, 1]])
    torch.library.opcheck(native.warp_matrices, (crop, torch.tensor([False, True, True]), 19, 11, 5, 3))
    lowres_in = (pb.ct_aug, pb.ct_orig, pb.ct_neg, pb.uy, pb.ux, pb.vy, pb.vx, pb.my, pb.mx, pb.weight, 1e-8)
    torch.library.opcheck(native.contrast_lowres_stats, lowres_in)
    products = native.contrast_lowres_stats(*lowres_in)[5:]
    coefs = (torch.randn(3, 3, dtype=F64), torch.randn(3, 4, dtype=F64), torch.randn(4, 3, dtype=F64),
             torch.randn(4, dtype=F64), torch.randn(3, dtype=F64), torch.randn(3, dtype=F64), torch.randn(3, dtype=F64))
    torch.library.opcheck(native.contrast_lowres_grads, (pb.ct_aug, *products, pb.weight, 1e-8, *coefs))


@needs_cpu_glue
def test_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("SGC_FAST_GLUE", raising=False)
    assert fused.glue_kind(cpu) == "native" and fused.glue(cpu) is fused.NativeGlue
    monkeypatch.setenv("SGC_FAST_GLUE", "torch")
    assert fused.glue_kind(cpu) == "torch" and fused.glue(cpu) is contrast.TorchGlue
    monkeypatch.setenv("SGC_FAST_GLUE", "native")
    assert fused.glue_kind(cpu) == "native"
    assert fused.glue_kind(torch.device("meta")) == "torch"  # no kernels there: the PyTorch glue
    info = sgc_fast.explain_glue("cpu")
    assert info["native"] == "ok" and info["torch"] == "ok" and info["chosen"] == "native"
    assert "TRITON_INTERPRET" in info["triton"] or info["triton"] == "ok"
    assert "no native kernels" in sgc_fast.explain_glue("meta")["native"]
    monkeypatch.setenv("SGC_FAST_GLUE", "fast")
    with pytest.raises(ValueError, match="SGC_FAST_GLUE: expected one of"):
        fused.glue_kind(cpu)
