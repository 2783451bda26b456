"""The C++/CUDA backend (csrc/cuda/) on a CUDA GPU: parity with the reference, forward and backward.

Error-budget rule (STYLE.md, after flash-attention): against a float64 computation on the same values,
the CUDA kernel's error must be at most twice the error of the same computation done by plain PyTorch in
the working precision, plus a small slack (relative to the largest magnitude of the float64 result).
float64 inputs run the kernels in float64 and must match to ~1e-12.

Covered: both ops at op level (``sgc_fast::batched_cam``, ``sgc_fast::contrast_sweep`` and their
backward ops) and through the public functions (``backend="cuda"``); SGC masks, CGC crops, both, separate
negatives (N != B, B = 1); fp32, bf16, fp16, fp64; odd shapes (B = 2, 3, 17, 130 so that the 128-wide
GEMM tiles have tails and off-diagonal tiles; h x w = 7x7, 14x14, 5x3; H x W not multiples of any tile);
contiguous, channels-last, sliced, expanded (head_grads) and misaligned inputs; generic interpolation
matrices (windows wider than bilinear's two taps, w = 1); outputs checked for NaN after the caching
allocator is filled with NaN (every element written); bitwise determinism; the standard shape
B = 256, K = 2048, 7x7 -> 224x224.

Skipped without a GPU or without the CUDA kernels (build with FORCE_CUDA=1). Run with
``pytest -m gpu tests/test_cuda_gpu.py``; ``tests/cuda_memcheck_case.py`` runs every kernel once for
``compute-sanitizer --tool memcheck``.
"""

from __future__ import annotations

import pytest
import torch
from problem import loss_leaves, random_crop, random_mask

import sgc_fast
from sgc_fast import contrast, fused, ops


def _cuda_kernels() -> bool:
    return ops._EXT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("sgc_fast::batched_cam", "CUDA")


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not _cuda_kernels(), reason="sgc_fast._C built without CUDA kernels (FORCE_CUDA=1)"),
]

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
#: Slack of the error-budget rule, relative to the largest magnitude of the float64 result.
SLACK = 2e-6
CLASSES = 1000


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """The PyTorch reference must run in IEEE fp32 too (no TF32 matmuls)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _rel_error(x: torch.Tensor, oracle: torch.Tensor) -> float:
    scale = oracle.detach().double().abs().max().item()
    return (x.detach().double() - oracle.detach().double()).abs().max().item() / max(scale, 1e-300)


def _check_budget(name: str, got: torch.Tensor, ref: torch.Tensor, oracle: torch.Tensor, slack: float = SLACK):
    assert got.shape == oracle.shape, f"{name}: shape {list(got.shape)} != {list(oracle.shape)}"
    assert torch.isfinite(got).all(), f"{name}: not finite (an element never written?)"
    e_kernel, e_ref = _rel_error(got, oracle), _rel_error(ref, oracle)
    assert e_kernel <= 2 * e_ref + slack, f"{name}: cuda error {e_kernel:.3e} > 2 x reference {e_ref:.3e} + {slack}"
    return f"{name}: cuda {e_kernel:.1e} ref {e_ref:.1e}"


def _poison_allocator(mb: int = 256):
    """Fill free blocks of the caching allocator with NaN: outputs the kernels forget to write show up."""
    torch.empty(mb * 2**18, device="cuda").fill_(float("nan"))
    torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------
# batched_cam
# ------------------------------------------------------------------------------------------------------

CAM_SHAPES = [(2, 5, 5, 3), (3, 37, 7, 7), (17, 64, 14, 14), (3, 2047, 7, 7), (2, 9, 1, 1)]


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # every other channel of a twice as wide tensor
        wide = torch.empty(t.shape[0], 2 * t.shape[1], *t.shape[2:], dtype=t.dtype, device=t.device)
        wide[:, ::2] = t
        return wide[:, ::2]
    if layout == "misaligned":  # contiguous per sample but 4 bytes off a vector boundary
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        v = flat[1:].view(t.shape)
        v.copy_(t)
        return v
    raise ValueError(layout)


def _cam_inputs(B, K, h, w, dtype, grads: str):
    dev = torch.device("cuda")
    feats = torch.rand(B, K, h, w, device=dev).to(dtype)
    if grads == "dense":
        return feats, ((torch.randn(B, K, h, w, device=dev) + 0.3) / (K * h * w) ** 0.5).to(dtype)
    return feats, ((torch.randn(B, K, device=dev) + 0.1) / K**0.5).to(dtype)  # compact [B, K]


def _cam_run(feats, grads, kind, backend, grad_cam):
    """CAM and its gradients w.r.t. feats and grads (the compact form is passed as head_grads' view)."""
    feats = feats.detach().requires_grad_()
    leaf = grads.detach().requires_grad_()
    g = leaf[:, :, None, None].expand_as(feats) if leaf.dim() == 2 else leaf
    cam = sgc_fast.batched_cam(feats, g, kind, backend=backend)
    d_feats, d_grads = torch.autograd.grad(cam, (feats, leaf), grad_cam)
    return cam, d_feats, d_grads


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("grads", ["dense", "compact"])
@pytest.mark.parametrize("kind", ["hires", "grad"])
@pytest.mark.parametrize("shape", CAM_SHAPES, ids=lambda s: "B{}-K{}-{}x{}".format(*s))
def test_batched_cam_error_budget(shape, kind, grads, dtype):
    B, K, h, w = shape
    feats, g = _cam_inputs(B, K, h, w, dtype, grads)
    grad_cam = torch.randn(B, h, w, device="cuda")
    _poison_allocator()
    got = _cam_run(feats, g, kind, "cuda", grad_cam)
    ref = _cam_run(feats, g, kind, "reference", grad_cam)
    oracle = _cam_run(feats.double(), g.double(), kind, "reference", grad_cam.double())
    assert got[0].dtype == F32 and got[1].dtype == dtype and got[2].dtype == dtype
    # Gradients come back in the input dtype: their rounding to bf16/fp16 is the same in both.
    for name, a, r, o in zip(("cam", "d_feats", "d_grads"), got, ref, oracle, strict=True):
        _check_budget(name, a, r, o, SLACK if dtype == F32 else 1e-3)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "misaligned"])
@pytest.mark.parametrize("grads", ["dense", "compact"])
@pytest.mark.parametrize("kind", ["hires", "grad"])
def test_batched_cam_layouts_float64(layout, grads, kind):
    """Every layout (flat vectorised kernels and strided kernels) matches the float64 reference tightly."""
    B, K, h, w = 5, 300, 7, 7
    feats, g = _cam_inputs(B, K, h, w, F64, grads)
    feats = _layout(feats, layout)
    if grads == "dense":
        g = _layout(g, layout)
    grad_cam = torch.randn(B, h, w, device="cuda", dtype=F64)
    _poison_allocator()
    got = _cam_run(feats, g, kind, "cuda", grad_cam)
    want = _cam_run(feats, g, kind, "reference", grad_cam)
    for name, a, e in zip(("cam", "d_feats", "d_grads"), got, want, strict=True):
        assert _rel_error(a, e) < 1e-12, name


def test_batched_cam_mixed_dtypes_and_grad_cam_layout():
    """feats and grads of different dtypes, and a non-contiguous (expanded) incoming gradient."""
    B, K, h, w = 4, 129, 7, 7
    feats = torch.rand(B, K, h, w, device="cuda", dtype=BF16)
    grads = torch.randn(B, K, h, w, device="cuda", dtype=F32)
    grad_cam = torch.ones((), device="cuda").expand(B, h, w)
    got = _cam_run(feats, grads, "hires", "cuda", grad_cam)
    want = _cam_run(feats.double(), grads.double(), "hires", "reference", grad_cam.double())
    assert got[1].dtype == BF16 and got[2].dtype == F32
    assert _rel_error(got[0], want[0]) < 1e-5
    assert _rel_error(got[1], want[1]) < 1e-2  # dA = G dz, rounded to bfloat16 (feats' dtype)
    assert _rel_error(got[2], want[2]) < 1e-5  # dG = A dz in float32 (grads' dtype)


def test_batched_cam_deterministic():
    B, K, h, w = 64, 2048, 7, 7
    for grads in ("dense", "compact"):
        feats, g = _cam_inputs(B, K, h, w, F32, grads)
        grad_cam = torch.randn(B, h, w, device="cuda")
        first = _cam_run(feats, g, "hires", "cuda", grad_cam)
        for _ in range(3):
            again = _cam_run(feats, g, "hires", "cuda", grad_cam)
            for a, b in zip(first, again, strict=True):
                assert torch.equal(a, b)


def test_batched_cam_opcheck():
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    feats = torch.rand(3, 40, 7, 7, device="cuda", requires_grad=True)
    for grads in (torch.randn(3, 40, 7, 7, device="cuda", requires_grad=True),
                  torch.randn(3, 40, device="cuda", requires_grad=True)):
        for kind in ("hires", "grad"):
            torch.library.opcheck(torch.ops.sgc_fast.batched_cam.default, (feats, grads, kind), test_utils=utils)


# ------------------------------------------------------------------------------------------------------
# contrast_sweep: op level, against the dense maps computed by PyTorch
# ------------------------------------------------------------------------------------------------------

#: (B, N, h, w, H, W); N = 0: in-batch negatives.
SWEEP_SHAPES = [
    (2, 0, 5, 3, 33, 17),
    (3, 0, 7, 7, 61, 45),
    (17, 0, 14, 14, 130, 100),
    (130, 0, 7, 7, 40, 36),
    (3, 5, 7, 7, 61, 45),
    (1, 4, 5, 3, 33, 17),
    (130, 7, 7, 7, 32, 33),
    (5, 200, 7, 7, 37, 32),
]


def _sweep_case(B, N, h, w, H, W, crop: bool, dtype, generic: bool = False):
    """The op's arguments (as fused.contrast_forward builds them) on the GPU."""
    dev = torch.device("cuda")
    co, ca = torch.rand(B, h, w, device=dev), torch.rand(B, h, w, device=dev)
    neg = torch.rand(N, h, w, device=dev) if N else None
    c, f = random_crop(B, H, W) if crop else (None, None)
    pb = contrast.prepare(co, ca, neg, None if c is None else c.to(dev), None if f is None else f.to(dev), (H, W), 1e-8)
    mask = random_mask(B, H, W).to(dev).view(torch.uint8)
    neg_mask = random_mask(N, H, W).to(dev).view(torch.uint8) if N else None
    args = list(fused.sweep_args(pb, mask, neg_mask, dtype))
    if generic:  # dense positive interpolation matrices: every window is wider than bilinear's two taps
        args[3] = torch.rand(H, h, device=dev, dtype=dtype) / h
        args[4] = torch.rand(W, w, device=dev, dtype=dtype) / w
        args[5] = torch.rand(args[5].shape, device=dev, dtype=dtype) / h
        args[6] = torch.rand(args[6].shape, device=dev, dtype=dtype) / w
    return args


def _dense_maps(args, dtype):
    """Full-resolution a, p, q ([n, H*W]) in `dtype` by plain PyTorch."""
    ca, co, mask, uy, ux, vy, vx, cq, nmask, eps = args
    uy, ux, vy, vx = (m.to(dtype) for m in (uy, ux, vy, vx))
    a = (uy @ ca.to(dtype) @ ux.T + eps) * (mask != 0)
    p = vy @ co.to(dtype) @ vx.transpose(1, 2) + eps
    q = (uy @ cq.to(dtype) @ ux.T + eps) * (nmask != 0) if cq.shape[0] else a
    return a.flatten(1), p.flatten(1), q.flatten(1)


def _dense_stats(args, dtype):
    a, p, q = _dense_maps(args, dtype)
    return a @ q.T, (a * p).sum(1), (a * a).sum(1), (p * p).sum(1), (q * q).sum(1)


def _random_coefs(B, N, dtype=F64, diagonal_aa: bool = False):
    dev = torch.device("cuda")
    caa = torch.randn(B, B, device=dev, dtype=dtype)
    if diagonal_aa:
        caa = torch.diag(torch.diagonal(caa))
    return (caa, torch.randn(B, N, device=dev, dtype=dtype), torch.randn(N, B, device=dev, dtype=dtype),
            torch.randn(N, device=dev, dtype=dtype), torch.randn(B, device=dev, dtype=dtype),
            torch.randn(B, device=dev, dtype=dtype), torch.randn(B, device=dev, dtype=dtype))


def _dense_grads(args, coefs, dtype):
    ca, co, mask, uy, ux, vy, vx, cq, nmask, eps = args
    B, h, w = ca.shape
    N, H, W = cq.shape[0], uy.shape[0], ux.shape[0]
    uy, ux, vy, vx = (m.to(dtype) for m in (uy, ux, vy, vx))
    caa, caq, cqa, cqq, cap, cpa, cpp = (c.to(dtype) for c in coefs)
    a, p, q = _dense_maps(args, dtype)
    d_a = (caa @ a + cap[:, None] * p) * (mask != 0).flatten(1)
    d_p = cpa[:, None] * a + cpp[:, None] * p
    g_aug = uy.T @ d_a.view(B, H, W) @ ux
    g_orig = vy.transpose(1, 2) @ d_p.view(B, H, W) @ vx
    g_neg = torch.zeros(0, h, w, device=ca.device, dtype=dtype)
    if N:
        d_a = d_a + (caq @ q) * (mask != 0).flatten(1)
        g_aug = uy.T @ d_a.view(B, H, W) @ ux
        d_q = (cqa @ a + cqq[:, None] * q) * (nmask != 0).flatten(1)
        g_neg = uy.T @ d_q.view(N, H, W) @ ux
    return g_aug, g_orig, g_neg


STAT_NAMES = ("gram", "pos", "norm_aug", "norm_orig", "norm_neg")
GRAD_NAMES = ("grad_aug", "grad_orig", "grad_neg")


@pytest.mark.parametrize("crop", [False, True], ids=["sgc", "sgc+crop"])
@pytest.mark.parametrize("shape", SWEEP_SHAPES, ids=lambda s: "B{}-N{}-{}x{}-{}x{}".format(*s))
def test_contrast_sweep_error_budget(shape, crop):
    args = _sweep_case(*shape, crop=crop, dtype=F32)
    args64 = [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    B, N = shape[0], shape[1]
    _poison_allocator()
    got = torch.ops.sgc_fast.contrast_sweep(*args)
    ref, oracle = _dense_stats(args, F32), _dense_stats(args64, F64)
    report = [_check_budget(n, g, r, o) for n, g, r, o in zip(STAT_NAMES, got, ref, oracle, strict=True)]
    coefs = _random_coefs(B, N, diagonal_aa=N > 0 and B % 2 == 1)
    _poison_allocator()
    got = torch.ops.sgc_fast.contrast_sweep_backward(*args, *coefs)
    ref, oracle = _dense_grads(args, coefs, F32), _dense_grads(args64, coefs, F64)
    for n, g, r, o in zip(GRAD_NAMES, got, ref, oracle, strict=True):
        if o.numel():
            report.append(_check_budget(n, g, r, o))
    print("; ".join(report))


@pytest.mark.parametrize("shape", [(3, 0, 7, 7, 29, 31), (4, 3, 5, 3, 20, 18), (3, 0, 1, 4, 9, 16), (2, 2, 4, 1, 12, 7)],
                         ids=lambda s: "B{}-N{}-{}x{}-{}x{}".format(*s))
@pytest.mark.parametrize("generic", [False, True], ids=["bilinear", "dense-matrices"])
def test_contrast_sweep_float64(shape, generic):
    """float64 kernels, also with interpolation windows wider than two taps and 1-wide CAMs (the kernels'
    general tap path), against the dense float64 computation."""
    args = _sweep_case(*shape, crop=True, dtype=F64, generic=generic)
    for n, g, o in zip(STAT_NAMES, torch.ops.sgc_fast.contrast_sweep(*args), _dense_stats(args, F64), strict=True):
        assert _rel_error(g, o) < 1e-12, n
    coefs = _random_coefs(shape[0], shape[1])
    got = torch.ops.sgc_fast.contrast_sweep_backward(*args, *coefs)
    for n, g, o in zip(GRAD_NAMES, got, _dense_grads(args, coefs, F64), strict=True):
        if o.numel():
            assert _rel_error(g, o) < 1e-11, n


def test_contrast_sweep_generic_float32():
    """The general tap path in float32 (error budget)."""
    args = _sweep_case(6, 3, 5, 3, 40, 23, crop=True, dtype=F32, generic=True)
    args64 = [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    for n, g, r, o in zip(STAT_NAMES, torch.ops.sgc_fast.contrast_sweep(*args), _dense_stats(args, F32),
                          _dense_stats(args64, F64), strict=True):
        _check_budget(n, g, r, o)
    coefs = _random_coefs(6, 3)
    got = torch.ops.sgc_fast.contrast_sweep_backward(*args, *coefs)
    for n, g, r, o in zip(GRAD_NAMES, got, _dense_grads(args, coefs, F32), _dense_grads(args64, coefs, F64),
                          strict=True):
        _check_budget(n, g, r, o)


def test_contrast_sweep_mask_layouts():
    """Strided and expanded masks (no 16-byte mask loads) give the same numbers as contiguous ones."""
    B, h, w, H, W = 5, 7, 7, 64, 64
    args = _sweep_case(B, 0, h, w, H, W, crop=False, dtype=F32)
    big = torch.zeros(B, 2 * H, 2 * W, dtype=torch.uint8, device="cuda")
    big[:, ::2, ::2] = args[2]
    strided = list(args)
    strided[2] = big[:, ::2, ::2]
    for a, b in zip(torch.ops.sgc_fast.contrast_sweep(*args), torch.ops.sgc_fast.contrast_sweep(*strided), strict=True):
        assert torch.equal(a, b)
    shared = list(args)
    shared[2] = args[2][:1].expand(B, H, W)
    dense = list(args)
    dense[2] = shared[2].contiguous()
    coefs = _random_coefs(B, 0)
    for a, b in zip(torch.ops.sgc_fast.contrast_sweep_backward(*shared, *coefs),
                    torch.ops.sgc_fast.contrast_sweep_backward(*dense, *coefs), strict=True):
        assert torch.equal(a, b)


def test_contrast_sweep_deterministic():
    args = _sweep_case(256, 0, 7, 7, 224, 224, crop=False, dtype=F32)
    coefs = _random_coefs(256, 0)
    first = torch.ops.sgc_fast.contrast_sweep(*args) + torch.ops.sgc_fast.contrast_sweep_backward(*args, *coefs)
    for _ in range(2):
        again = torch.ops.sgc_fast.contrast_sweep(*args) + torch.ops.sgc_fast.contrast_sweep_backward(*args, *coefs)
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


def test_contrast_sweep_opcheck():
    args = _sweep_case(3, 0, 7, 7, 40, 36, crop=False, dtype=F32)
    torch.library.opcheck(torch.ops.sgc_fast.contrast_sweep.default, tuple(args),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.sgc_fast.contrast_sweep_backward.default,
                          tuple(args) + _random_coefs(3, 0), test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------------------------------
# Public functions with backend="cuda"
# ------------------------------------------------------------------------------------------------------


def _frame(method: str, B: int, H: int, W: int) -> dict:
    dev = torch.device("cuda")
    mask = random_mask(B, H, W).to(dev) if method in ("sgc", "both") else None
    crop, flip = random_crop(B, H, W) if method in ("cgc", "both") else (None, None)
    if crop is not None:
        crop, flip = crop.to(dev), flip.to(dev)
    return dict(mask=mask, crop=crop, flip=flip, size=(H, W))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("method", ["sgc", "cgc", "both", "separate"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 33, 17), (3, 7, 7, 61, 45), (17, 14, 14, 130, 100)],
                         ids=lambda s: "B{}-{}x{}-{}x{}".format(*s))
def test_contrast_logits_error_budget(shape, method, dtype):
    B, h, w, H, W = shape
    dev = torch.device("cuda")
    co = torch.rand(B, h, w, device=dev).to(dtype)
    ca = torch.rand(B, h, w, device=dev).to(dtype)
    kw = _frame("sgc" if method == "separate" else method, B, H, W)
    leaves = [co, ca]
    if method == "separate":
        N = B + 2
        kw.update(neg_cam=torch.rand(N, h, w, device=dev).to(dtype), neg_mask=random_mask(N, H, W).to(dev),
                  self_index=torch.arange(B, device=dev) - 1)
        leaves.append(kw.pop("neg_cam"))

    def run(xs, backend):
        xs = [x.detach().requires_grad_() for x in xs]
        extra = dict(neg_cam=xs[2]) if len(xs) > 2 else {}
        logits = sgc_fast.contrast_logits(xs[0], xs[1], backend=backend, **kw, **extra)
        g = torch.randn(logits.shape, generator=torch.Generator(device=dev).manual_seed(0), device=dev)
        g = g.masked_fill(~torch.isfinite(logits), 0).to(logits.dtype)
        return [logits] + list(torch.autograd.grad(logits, xs, g))

    got = run(leaves, "cuda")
    ref = run(leaves, "reference")
    oracle = run([x.double() for x in leaves], "reference")
    fin = torch.isfinite(oracle[0])
    assert torch.equal(fin, torch.isfinite(got[0]))
    report = [_check_budget("logits", got[0][fin], ref[0][fin], oracle[0][fin])]
    names = ["d_cam_orig", "d_cam_aug", "d_neg_cam"]
    for name, a, r, o in zip(names, got[1:], ref[1:], oracle[1:]):  # noqa: B905 - neg only when separate
        report.append(_check_budget(name, a, r, o, SLACK if dtype == F32 else 1e-2))
    print("; ".join(report))


#: (B, K, h, w, H, W): ResNet-50 at B = 256 (the standard shape), and 14x14 -> 448x448 at B = 64.
STANDARD = [(256, 2048, 7, 7, 224, 224), (64, 2048, 14, 14, 448, 448)]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("grads", ["dense", "head"])
@pytest.mark.parametrize("method", ["sgc", "cgc"])
@pytest.mark.parametrize("shape", STANDARD, ids=lambda s: "B{}-K{}-{}x{}-{}x{}".format(*s))
def test_loss_error_budget_standard(shape, method, grads, dtype):
    B, K, h, w, H, W = shape
    leaves, inputs = loss_leaves(B, K, h, w, grads, dtype, torch.device("cuda"), CLASSES)
    frame = _frame(method, B, H, W)

    def run(xs, backend):
        loss = sgc_fast.saliency_contrast_loss(*inputs(*xs), backend=backend, **frame)
        return [loss] + list(torch.autograd.grad(loss, xs))

    got = run(leaves, "cuda")
    ref = run(leaves, "reference")
    oracle = run([t.detach().double().requires_grad_() for t in leaves], "reference")
    names = ["loss"] + (["dfeats_orig", "dgrads_orig", "dfeats_aug", "dgrads_aug"] if grads == "dense"
                        else ["dfeats_orig", "dfeats_aug", "dweight"])
    report = []
    for name, g, r, o in zip(names, got, ref, oracle, strict=True):
        assert g.dtype == r.dtype, f"{name}: {g.dtype} != {r.dtype}"
        report.append(_check_budget(name, g, r, o))
    print("; ".join(report))
