"""The Triton backend on a CUDA GPU, at the standard shapes of DESIGN §4.

Error-budget rule (STYLE.md, after flash-attention): against a float64 reference on the same values, the
Triton backend's error must be at most twice the error of the plain PyTorch reference run in the same
precision, plus a tiny slack. Checked for the full loss (forward value and the gradients of every leaf:
feats and grads of both views, or the head weight), SGC and CGC, dense and head gradients, float32 and
bfloat16 inputs. Also: opcheck of the registered ops, torch.compile over the triton_op, float64 kernels.

Skipped without CUDA; marked ``gpu``. Run with ``pytest -m gpu tests/test_triton_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from problem import loss_leaves, random_crop, random_mask

import sgc_fast
from sgc_fast import reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
pytest.importorskip("triton")

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
#: (B, K, h, w, H, W): ResNet-50 at B = 64 and 256, and 14x14 -> 448x448 at B = 64.
STANDARD = [(64, 2048, 7, 7, 224, 224), (256, 2048, 7, 7, 224, 224), (64, 2048, 14, 14, 448, 448)]
#: Slack of the error-budget rule, relative to the largest magnitude of the float64 result.
SLACK = 2e-6
#: Classes of the head in the "head" gradient case.
CLASSES = 1000


def shape_id(s) -> str:
    return "B{}-K{}-{}x{}-{}x{}".format(*s)


def _frame(method: str, B: int, H: int, W: int, device) -> dict:
    mask = random_mask(B, H, W).to(device) if method == "sgc" else None
    crop, flip = random_crop(B, H, W) if method == "cgc" else (None, None)
    if crop is not None:
        crop, flip = crop.to(device), flip.to(device)
    return dict(mask=mask, crop=crop, flip=flip, size=(H, W))


def _loss_and_grads(leaves, inputs, frame, backend):
    loss = sgc_fast.saliency_contrast_loss(*inputs(*leaves), backend=backend, **frame)
    return [loss] + list(torch.autograd.grad(loss, leaves))


def _rel_error(x: torch.Tensor, oracle: torch.Tensor) -> float:
    scale = oracle.abs().max().item()
    return (x.double() - oracle).abs().max().item() / max(scale, 1e-300)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("grads", ["dense", "head"])
@pytest.mark.parametrize("method", ["sgc", "cgc"])
@pytest.mark.parametrize("shape", STANDARD, ids=shape_id)
def test_loss_error_budget(shape, method, grads, dtype):
    B, K, h, w, H, W = shape
    dev = torch.device("cuda")
    leaves, inputs = loss_leaves(B, K, h, w, grads, dtype, dev, CLASSES)
    frame = _frame(method, B, H, W, dev)
    got = _loss_and_grads(leaves, inputs, frame, "triton")
    torch.cuda.synchronize()
    ref = _loss_and_grads(leaves, inputs, frame, "reference")
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    oracle = _loss_and_grads(leaves64, inputs, frame, "reference")
    names = ["loss"] + (["dfeats_orig", "dgrads_orig", "dfeats_aug", "dgrads_aug"] if grads == "dense"
                        else ["dfeats_orig", "dfeats_aug", "dweight"])
    report = []
    for name, g, r, o in zip(names, got, ref, oracle, strict=True):
        assert g.shape == o.shape and g.dtype == r.dtype, f"{name}: {g.dtype} {list(g.shape)}"
        assert torch.isfinite(g).all(), f"{name}: not finite"
        e_kernel, e_ref = _rel_error(g, o), _rel_error(r, o)
        report.append(f"{name}: triton {e_kernel:.2e} reference {e_ref:.2e}")
        assert e_kernel <= 2 * e_ref + SLACK, f"{name}: triton error {e_kernel:.3e} > 2 x reference {e_ref:.3e} + {SLACK}"
    print("; ".join(report))


@pytest.mark.parametrize("grads", ["dense", "head"])
def test_tf32x3_sweep_meets_the_float32_budget(grads, monkeypatch):
    """SGC_FAST_TRITON_DOT=tf32x3 (tensor cores, three TF32 products) keeps the float32 error budget."""
    monkeypatch.setenv("SGC_FAST_TRITON_DOT", "tf32x3")
    B, K, h, w, H, W = STANDARD[1]
    dev = torch.device("cuda")
    leaves, inputs = loss_leaves(B, K, h, w, grads, F32, dev, CLASSES)
    frame = _frame("sgc", B, H, W, dev)
    got = _loss_and_grads(leaves, inputs, frame, "triton")
    ref = _loss_and_grads(leaves, inputs, frame, "reference")
    oracle = _loss_and_grads([t.detach().double().requires_grad_() for t in leaves], inputs, frame, "reference")
    for k, (g, r, o) in enumerate(zip(got, ref, oracle, strict=True)):
        e_kernel, e_ref = _rel_error(g, o), _rel_error(r, o)
        assert e_kernel <= 2 * e_ref + SLACK, f"output {k}: tf32x3 error {e_kernel:.3e} > 2 x reference {e_ref:.3e}"


@pytest.mark.parametrize("method", ["sgc", "sgc-crop", "separate"])
def test_contrast_float64(method):
    """float64 CAMs run the kernels in float64 (tl.dot in float64) and match the reference tightly."""
    B, N, h, w, H, W = 5, 7, 7, 7, 61, 45
    dev = torch.device("cuda")
    co = torch.rand(B, h, w, dtype=F64, device=dev, requires_grad=True)
    ca = torch.rand(B, h, w, dtype=F64, device=dev, requires_grad=True)
    kw = dict(mask=random_mask(B, H, W).to(dev), size=(H, W))
    if method == "sgc-crop":
        crop, flip = random_crop(B, H, W)
        kw.update(crop=crop.to(dev), flip=flip.to(dev))
    leaves = [co, ca]
    if method == "separate":
        neg = torch.rand(N, h, w, dtype=F64, device=dev, requires_grad=True)
        kw.update(neg_cam=neg, neg_mask=random_mask(N, H, W).to(dev), self_index=torch.arange(B, device=dev) - 1)
        leaves.append(neg)
    got = sgc_fast.contrast_logits(co, ca, backend="triton", **kw)
    want = reference.contrast_logits(co, ca, **kw)
    fin = torch.isfinite(want)
    assert torch.equal(fin, torch.isfinite(got))
    assert _rel_error(got[fin], want[fin]) < 1e-12
    g = torch.randn_like(want).masked_fill(~fin, 0)
    for a, e in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(want, leaves, g), strict=True):
        assert _rel_error(a, e) < 1e-10


def test_batched_cam_float64_and_channels_last():
    dev = torch.device("cuda")
    feats = torch.rand(6, 300, 7, 7, dtype=F64, device=dev).to(memory_format=torch.channels_last).requires_grad_()
    grads = torch.randn(6, 300, 7, 7, dtype=F64, device=dev, requires_grad=True)
    for kind in ("hires", "grad"):
        cam = sgc_fast.batched_cam(feats, grads, kind, backend="triton")
        want = reference.batched_cam(feats, grads, kind)
        assert _rel_error(cam, want) < 1e-13
        g = torch.randn_like(cam)
        got = torch.autograd.grad(cam, (feats, grads), g)
        for a, e in zip(got, torch.autograd.grad(want, (feats, grads), g), strict=True):
            assert _rel_error(a, e) < 1e-13


def test_opcheck_triton_ops():
    from sgc_fast import contrast, fused
    from sgc_fast.triton import batched_cam_kernel, contrast_sweep_kernel  # noqa: F401 - register the ops

    dev = torch.device("cuda")
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")
    feats = torch.rand(3, 40, 7, 7, device=dev, requires_grad=True)
    for grads in (torch.randn(3, 40, 7, 7, device=dev, requires_grad=True),
                  torch.randn(3, 40, device=dev, requires_grad=True)):
        torch.library.opcheck(torch.ops.sgc_fast.triton_batched_cam.default, (feats, grads, "hires"),
                              test_utils=utils)
    B, h, w, H, W = 3, 7, 7, 40, 36
    pb = contrast.prepare(torch.rand(B, h, w, device=dev), torch.rand(B, h, w, device=dev), None, None, None,
                          (H, W), 1e-8)
    args = fused.sweep_args(pb, random_mask(B, H, W).to(dev).view(torch.uint8), None, F32)
    torch.library.opcheck(torch.ops.sgc_fast.triton_contrast_sweep.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_sees_triton_batched_cam():
    """The triton_op traces under torch.compile (fullgraph), forward and backward, dense and compact grads.

    Calls the op directly: sgc_fast.batched_cam's head_grads detection (ops.compact_grads) reads
    storage_offset(), which Dynamo does not trace."""
    from sgc_fast.triton import batched_cam_kernel  # noqa: F401 - registers the op

    dev = torch.device("cuda")
    feats = torch.rand(4, 64, 7, 7, device=dev, requires_grad=True)
    for grads in (torch.randn(4, 64, 7, 7, device=dev, requires_grad=True),
                  torch.randn(4, 64, device=dev, requires_grad=True)):

        def f(x, g):
            cam = torch.ops.sgc_fast.triton_batched_cam(x, g, "hires")
            return (cam * cam).sum()

        got = torch.compile(f, fullgraph=True)(feats, grads)
        want = f(feats, grads)
        assert _rel_error(got, want.detach().double()) < 1e-6
        got_grads = torch.autograd.grad(got, (feats, grads))
        for a, e in zip(got_grads, torch.autograd.grad(want, (feats, grads)), strict=True):
            assert _rel_error(a, e.double()) < 1e-6
