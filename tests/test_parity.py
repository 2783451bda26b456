"""sgc_fast against the research-style implementation (tests/research_style.py): loss values, gradients
w.r.t. feats and grads of both views, and model parameter gradients through the double backward.

Both CPU backends ("reference" and "cpu"), SGC / CGC / both, both CAM kinds, float64 (tight) and float32
(against the float64 research computation on the same values), separate negatives, and the edge cases:
empty mask rows, all-zero CAMs, whole-map and 1-pixel crops, odd shapes, strided and expanded inputs.
"""

from __future__ import annotations

import pytest
import research_style as rs
import torch
from problem import METHODS, SHAPES, assert_close, random_crop, random_mask, random_views

import sgc_fast

BACKENDS = ("reference", "cpu")
KINDS = ("hires", "grad")
F64, F32 = torch.float64, torch.float32
#: relative tolerance (to the largest magnitude) against the float64 research computation
RTOL = {F64: 1e-10, F32: 2e-4}
#: absolute slack of gradient comparisons: where a gradient is tiny (nearly flat loss, e.g. most CAMs
#: zero) its relative error is rounding noise of much larger intermediate terms
ATOL = {F64: 1e-14, F32: 1e-6}


def shape_id(shape) -> str:
    B, K, h, w, H, W = shape
    return f"B{B}K{K}-{h}x{w}-{H}x{W}"


def library_loss_and_grads(views, *, kind, backend, temperature=0.5):
    loss = sgc_fast.saliency_contrast_loss(*views.leaves, kind=kind, temperature=temperature, backend=backend,
                                           **views.frame())
    return loss, torch.autograd.grad(loss, views.leaves)


def research_loss_and_grads(views, *, kind, temperature=0.5):
    o = views.as_double()
    loss = rs.contrast_loss(*o.leaves, kind=kind, temperature=temperature, **o.frame())
    return loss, torch.autograd.grad(loss, o.leaves)


def float32_slack(f32_grads, f64_grads) -> list[float]:
    """Per tensor, 8x the error of the same computation done in float32 by the research-style oracle. Some random
    problems are ill-conditioned (a crop of 1-2 pixels makes the warped map constant, and a gradient that is ~0
    comes out of cancelling large terms): there every float32 implementation, the oracle too, is off by more than
    the relative tolerance of the largest true gradient; the fused backends must do as well as float32 allows."""
    return [8 * (a.double() - b).abs().max().item() for a, b in zip(f32_grads, f64_grads, strict=True)]


def assert_parity(views, *, kind, backend, dtype, temperature=0.5, what=""):
    loss, grads = library_loss_and_grads(views, kind=kind, backend=backend, temperature=temperature)
    want_loss, want_grads = research_loss_and_grads(views, kind=kind, temperature=temperature)
    slack = [0.0] * 4
    if dtype == F32:
        f32 = rs.contrast_loss(*views.leaves, kind=kind, temperature=temperature, **views.frame())
        slack = float32_slack(torch.autograd.grad(f32, views.leaves), want_grads)
    assert loss.dim() == 0 and loss.dtype == (F64 if dtype == F64 else F32)
    assert torch.isfinite(loss)
    rtol = RTOL[dtype]
    assert_close(loss, want_loss, rtol, what=f"{what} loss")
    names = ("feats_orig", "grads_orig", "feats_aug", "grads_aug")
    for name, g, w, extra in zip(names, grads, want_grads, slack, strict=True):
        assert g.dtype == dtype
        assert torch.isfinite(g).all(), f"{what} d{name} not finite"
        assert_close(g, w, rtol, atol=max(ATOL[dtype], extra), what=f"{what} d{name}")
    return loss, grads


# ---------------------------------------------------------------------------------------------------------
# Leaf feats / grads: the loss and its gradients
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_and_input_grads(backend, method, kind, dtype, shape):
    views = random_views(*shape, method, dtype)
    assert_parity(views, kind=kind, backend=backend, dtype=dtype, temperature=0.3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sgc_module(backend, kind):
    views = random_views(3, 6, 5, 3, 33, 17, "sgc")
    loss = sgc_fast.SGCLoss(temperature=0.7, kind=kind, backend=backend)(*views.leaves, views.mask)
    grads = torch.autograd.grad(loss, views.leaves)
    o = views.as_double()
    want = rs.contrast_loss(*o.leaves, kind=kind, temperature=0.7, mask=o.mask, size=o.size)
    assert_close(loss, want, 1e-10, what="SGCLoss")
    for g, w in zip(grads, torch.autograd.grad(want, o.leaves), strict=True):
        assert_close(g, w, 1e-10, atol=ATOL[F64], what="SGCLoss grad")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cgc_module(backend, kind):
    views = random_views(3, 6, 7, 7, 24, 20, "cgc")
    loss = sgc_fast.CGCLoss(size=(24, 20), temperature=0.4, kind=kind, backend=backend)(
        *views.leaves, views.crop, views.flip
    )
    grads = torch.autograd.grad(loss, views.leaves)
    o = views.as_double()
    want = rs.contrast_loss(*o.leaves, kind=kind, temperature=0.4, crop=o.crop, flip=o.flip, size=o.size)
    assert_close(loss, want, 1e-10, what="CGCLoss")
    for g, w in zip(grads, torch.autograd.grad(want, o.leaves), strict=True):
        assert_close(g, w, 1e-10, atol=ATOL[F64], what="CGCLoss grad")


# ---------------------------------------------------------------------------------------------------------
# A model: parameter gradients through autograd.grad(create_graph=True)
# ---------------------------------------------------------------------------------------------------------


def frame_args(method, B, H, W):
    mask = random_mask(B, H, W) if method in ("sgc", "both") else None
    crop, flip = random_crop(B, H, W) if method in ("cgc", "both") else (None, None)
    return dict(mask=mask, crop=crop, flip=flip, size=(H, W))


def param_grads(model):
    """Every parameter's .grad (zeros where the loss does not reach it, e.g. fc.bias)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def research_param_grads(model, x_orig, x_aug, *, kind, frame):
    model.zero_grad()
    loss = rs.contrast_loss(*rs.model_views(model, x_orig, x_aug)[:4], kind=kind, **frame)
    loss.backward()
    return loss.detach(), param_grads(model)


def library_param_grads(model, x_orig, x_aug, *, kind, frame, backend, grads_from="target_grads"):
    model.zero_grad()
    logits_orig, feats_orig = model(x_orig)
    logits_aug, feats_aug = model(x_aug)
    targets = logits_orig.argmax(1)
    if grads_from == "target_grads":
        grads_orig = sgc_fast.target_grads(logits_orig, feats_orig, targets, create_graph=True)
        grads_aug = sgc_fast.target_grads(logits_aug, feats_aug, targets, create_graph=True)
    else:
        grads_orig = sgc_fast.head_grads(model.fc.weight, feats_orig, targets)
        grads_aug = sgc_fast.head_grads(model.fc.weight, feats_aug, targets)
    loss = sgc_fast.saliency_contrast_loss(feats_orig, grads_orig, feats_aug, grads_aug, kind=kind, backend=backend,
                                           **frame)
    loss.backward()
    return loss.detach(), param_grads(model)


def assert_param_parity(model, got, want, rtol, atol=ATOL[F64]):
    loss, grads = got
    want_loss, want_grads = want
    assert_close(loss, want_loss, rtol, what="loss")
    for (name, _), g, w in zip(model.named_parameters(), grads, want_grads, strict=True):
        assert torch.isfinite(g).all(), f"d{name} not finite"
        assert_close(g, w, rtol, atol=atol, what=f"d{name}")
    # the CAM path really reaches the parameters (not only the cross-entropy-free feats path)
    assert any(g.abs().max() > 0 for g in grads)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head", ["linear", "quadratic"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_grads_float64(backend, method, head, kind):
    B, h, w, H, W = 3, 7, 5, 33, 17
    model = rs.TinyNet(channels=8, num_classes=5, head=head).double()
    x_orig, x_aug = torch.randn(B, 3, h, w, dtype=F64), torch.randn(B, 3, h, w, dtype=F64)
    frame = frame_args(method, B, H, W)
    want = research_param_grads(model, x_orig, x_aug, kind=kind, frame=frame)
    got = library_param_grads(model, x_orig, x_aug, kind=kind, frame=frame, backend=backend)
    assert_param_parity(model, got, want, 1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_grads_float32(backend, method):
    B, h, w, H, W = 3, 7, 7, 24, 20
    model = rs.TinyNet(channels=8, num_classes=5, head="quadratic")
    x_orig, x_aug = torch.randn(B, 3, h, w), torch.randn(B, 3, h, w)
    frame = frame_args(method, B, H, W)
    got = library_param_grads(model, x_orig, x_aug, kind="hires", frame=frame, backend=backend)
    want = research_param_grads(model.double(), x_orig.double(), x_aug.double(), kind="hires", frame=frame)
    assert_param_parity(model, got, want, 5e-4, atol=ATOL[F32])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_grads_head_grads(backend, method):
    """The stride-0 head_grads view trains the parameters exactly like autograd's gradient."""
    B, h, w, H, W = 3, 5, 3, 33, 17
    model = rs.TinyNet(channels=8, num_classes=5, head="linear").double()
    x_orig, x_aug = torch.randn(B, 3, h, w, dtype=F64), torch.randn(B, 3, h, w, dtype=F64)
    frame = frame_args(method, B, H, W)
    want = research_param_grads(model, x_orig, x_aug, kind="hires", frame=frame)
    got = library_param_grads(model, x_orig, x_aug, kind="hires", frame=frame, backend=backend,
                              grads_from="head_grads")
    assert_param_parity(model, got, want, 1e-9)
    assert got[1][-2].abs().max() > 0  # fc.weight receives the CAM's gradient


# ---------------------------------------------------------------------------------------------------------
# Separate negatives
# ---------------------------------------------------------------------------------------------------------


def random_cams(n, h, w, dtype):
    """CAM-like maps: nonnegative with exact zeros (as after the relu)."""
    return torch.relu(torch.randn(n, h, w) + 0.5).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("frame", ["plain", "sgc", "cgc", "both"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,N", [(3, 5), (1, 2), (4, 4)])
def test_separate_negatives(backend, frame, dtype, B, N):
    h, w, H, W = 5, 3, 33, 17
    cam_orig, cam_aug, neg_cam = random_cams(B, h, w, dtype), random_cams(B, h, w, dtype), random_cams(N, h, w, dtype)
    masked = frame in ("sgc", "both")
    mask = random_mask(B, H, W) if masked else None
    neg_mask = random_mask(N, H, W) if masked else None
    crop, flip = random_crop(B, H, W) if frame in ("cgc", "both") else (None, None)
    self_index = torch.randint(-1, N, (B,))
    self_index[0] = min(N - 1, 1)  # at least one -inf column
    kw = dict(mask=mask, crop=crop, flip=flip, size=(H, W), temperature=0.3)
    logits = sgc_fast.contrast_logits(cam_orig, cam_aug, neg_cam=neg_cam, neg_mask=neg_mask, self_index=self_index,
                                      backend=backend, **kw)
    d = [t.detach().double().requires_grad_() for t in (cam_orig, cam_aug, neg_cam)]
    want = rs.contrast_logits_separate(d[0], d[1], d[2], neg_mask=neg_mask, self_index=self_index, **kw)
    assert logits.shape == (B, 1 + N) and logits.dtype == (F64 if dtype == F64 else F32)
    assert torch.isneginf(logits[torch.arange(B)[self_index >= 0], 1 + self_index[self_index >= 0]]).all()
    assert_close(logits, want, RTOL[dtype], what="logits")
    got_grads = torch.autograd.grad(rs.info_nce(logits), (cam_orig, cam_aug, neg_cam))
    want_grads = torch.autograd.grad(rs.info_nce(want), d)
    slack = [0.0] * 3
    if dtype == F32:
        f32 = rs.contrast_logits_separate(cam_orig, cam_aug, neg_cam, neg_mask=neg_mask, self_index=self_index, **kw)
        slack = float32_slack(torch.autograd.grad(rs.info_nce(f32), (cam_orig, cam_aug, neg_cam)), want_grads)
    for name, g, wg, extra in zip(("cam_orig", "cam_aug", "neg_cam"), got_grads, want_grads, slack, strict=True):
        assert torch.isfinite(g).all()
        assert_close(g, wg, RTOL[dtype], atol=max(ATOL[dtype], extra), what=f"d{name}")


# ---------------------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["sgc", "both"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_mask_row(backend, method, kind):
    views = random_views(3, 6, 5, 3, 33, 17, method)
    views.mask[1] = False
    _, grads = assert_parity(views, kind=kind, backend=backend, dtype=F64, what="empty mask")
    cams = [sgc_fast.batched_cam(f, g, kind, backend=backend) for f, g in
            ((views.feats_orig, views.grads_orig), (views.feats_aug, views.grads_aug))]
    logits = sgc_fast.contrast_logits(*cams, backend=backend, **views.frame())
    assert torch.isfinite(logits).all()
    # the empty map is the zero vector: its row and its column among the negatives are exactly 0
    assert (logits[1] == 0).all() and logits[0, 1] == 0 and logits[2, 2] == 0
    # no gradient reaches the aug view of the empty sample
    assert (grads[2][1] == 0).all() and (grads[3][1] == 0).all()


@pytest.mark.parametrize("view", ["orig", "aug", "both"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_cam(backend, method, kind, view):
    views = random_views(3, 6, 5, 3, 33, 17, method, signed_grads=False)
    with torch.no_grad():  # positive feats and negative grads: the relu kills the whole CAM of sample 0
        if view in ("orig", "both"):
            views.grads_orig[0].neg_()
        if view in ("aug", "both"):
            views.grads_aug[0].neg_()
    cam = sgc_fast.batched_cam(views.feats_orig, views.grads_orig, kind, backend=backend)
    assert (cam[0] == 0).all() == (view in ("orig", "both"))
    _, grads = assert_parity(views, kind=kind, backend=backend, dtype=F64, what="zero CAM")
    if view in ("orig", "both"):
        assert (grads[0][0] == 0).all() and (grads[1][0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_mask_and_zero_cam_float32(backend):
    views = random_views(3, 6, 7, 7, 24, 20, "both", dtype=F32, signed_grads=False)
    views.mask[2] = False
    with torch.no_grad():
        views.grads_aug[1].neg_()
        views.grads_orig[2].neg_()
    assert_parity(views, kind="hires", backend=backend, dtype=F32, what="degenerate float32")


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_covering_whole_map(backend, flip):
    B, H, W = 3, 33, 17
    views = random_views(B, 6, 5, 3, H, W, "cgc")
    views.crop = torch.tensor([[0, 0, H, W]] * B)
    views.flip = torch.full((B,), flip)
    assert_parity(views, kind="hires", backend=backend, dtype=F64, what="whole-map crop")
    cams = [sgc_fast.batched_cam(f, g, backend=backend) for f, g in
            ((views.feats_orig, views.grads_orig), (views.feats_aug, views.grads_aug))]
    cropped = sgc_fast.contrast_logits(*cams, crop=views.crop, flip=views.flip, size=(H, W), backend=backend)
    orig = cams[0].flip(-1) if flip else cams[0]  # a flip of the map is a flip of the CAM (symmetric resize)
    plain = sgc_fast.contrast_logits(orig, cams[1], size=(H, W), backend=backend)
    assert_close(cropped, plain, 1e-12, what="identity crop vs no crop")


@pytest.mark.parametrize("method", ["cgc", "both"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pixel_crops(backend, method):
    B, H, W = 4, 33, 17
    views = random_views(B, 6, 5, 3, H, W, method)
    views.crop = torch.tensor([[3, 16, 20, 1], [32, 2, 1, 15], [0, 0, 1, 1], [32, 16, 1, 1]])
    views.flip = torch.tensor([True, False, True, False])
    assert_parity(views, kind="hires", backend=backend, dtype=F64, what="1-pixel crops")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_feats_and_grads(backend, method):
    """channels_last feats and a non-contiguous grads view give the contiguous result."""
    B, K, h, w, H, W = 3, 6, 7, 5, 24, 20
    views = random_views(B, K, h, w, H, W, method)
    strided = random_views(B, K, h, w, H, W, method)
    with torch.no_grad():
        strided.feats_orig = views.feats_orig.detach().to(memory_format=torch.channels_last).requires_grad_()
        strided.feats_aug = views.feats_aug.detach().to(memory_format=torch.channels_last).requires_grad_()
        # [B, 2K, w, h] -> every other channel, transposed: no dimension has unit stride in its place
        big = torch.zeros(B, 2 * K, w, h, dtype=F64)
        big[:, ::2] = views.grads_orig.detach().transpose(2, 3)
        grads_orig = big.requires_grad_()
        strided.grads_aug = views.grads_aug.detach().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        strided.grads_aug.requires_grad_()
    strided.grads_orig = grads_orig[:, ::2].transpose(2, 3)
    strided.mask, strided.crop, strided.flip = views.mask, views.crop, views.flip
    assert strided.feats_orig.stride(1) == 1 and not strided.grads_orig.is_contiguous()
    loss_s = sgc_fast.saliency_contrast_loss(*strided.leaves, backend=backend, **strided.frame())
    d_s = torch.autograd.grad(loss_s, [strided.feats_orig, grads_orig, strided.feats_aug, strided.grads_aug])
    loss_c, d_c = library_loss_and_grads(views, kind="hires", backend=backend)
    assert_close(loss_s, loss_c, 1e-13, what="loss")
    assert_close(d_s[0], d_c[0], 1e-13, what="dfeats_orig")
    assert_close(d_s[1][:, ::2].transpose(2, 3), d_c[1], 1e-13, what="dgrads_orig")
    assert (d_s[1][:, 1::2] == 0).all()
    assert_close(d_s[2], d_c[2], 1e-13, what="dfeats_aug")
    assert_close(d_s[3], d_c[3], 1e-13, what="dgrads_aug")
    assert_parity(strided, kind="hires", backend=backend, dtype=F64, what="strided")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_head_grads(backend, method, kind):
    """grads = head_grads(W, feats, t), a stride-0 view: same loss and gradients (incl. dW) as the
    materialised gradient in the research computation."""
    B, K, C, h, w, H, W = 3, 6, 4, 5, 3, 33, 17
    views = random_views(B, K, h, w, H, W, method)
    weight = (torch.rand(C, K, dtype=F64) - 0.2).requires_grad_()  # mostly positive: CAMs not all zero
    targets = torch.randint(0, C, (B,))
    g_orig = sgc_fast.head_grads(weight, views.feats_orig, targets)
    g_aug = sgc_fast.head_grads(weight, views.feats_aug, targets)
    assert g_orig.stride()[2:] == (0, 0)
    loss = sgc_fast.saliency_contrast_loss(views.feats_orig, g_orig, views.feats_aug, g_aug, kind=kind,
                                           backend=backend, **views.frame())
    got = torch.autograd.grad(loss, (views.feats_orig, views.feats_aug, weight))

    w2 = weight.detach().clone().requires_grad_()
    fo, fa = views.feats_orig.detach().clone().requires_grad_(), views.feats_aug.detach().clone().requires_grad_()
    dense = (w2[targets] / (h * w))[:, :, None, None].repeat(1, 1, h, w)  # materialised, research style
    want_loss = rs.contrast_loss(fo, dense, fa, dense, kind=kind, **views.frame())
    want = torch.autograd.grad(want_loss, (fo, fa, w2))
    assert_close(loss, want_loss, 1e-10, what="loss")
    for name, g, wg in zip(("feats_orig", "feats_aug", "weight"), got, want, strict=True):
        assert_close(g, wg, 1e-10, atol=ATOL[F64], what=f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_crop_and_cam_forms(backend):
    """Masks as bool / uint8 / float (nonzero = salient), non-contiguous and expanded; int32 crops;
    transposed CAMs: all give the logits of the plain contiguous bool/int64 inputs."""
    B, h, w, H, W = 3, 5, 3, 33, 17
    cam_orig, cam_aug = random_cams(B, h, w, F64), random_cams(B, h, w, F64)
    mask_t = torch.rand(B, W, H) < 0.6
    mask = mask_t.transpose(1, 2)  # non-contiguous
    crop, flip = random_crop(B, H, W)
    want = rs.contrast_logits(cam_orig, cam_aug, size=(H, W), mask=mask.contiguous(), crop=crop, flip=flip)
    forms = {
        "bool": mask, "uint8": mask.to(torch.uint8), "float": mask.double(), "float_scaled": mask.float() * 0.5,
        "expanded": mask[:1].expand(B, H, W),
    }
    for name, m in forms.items():
        w_ = want if name != "expanded" else rs.contrast_logits(
            cam_orig, cam_aug, size=(H, W), mask=mask[:1].expand(B, H, W).contiguous(), crop=crop, flip=flip)
        got = sgc_fast.contrast_logits(cam_orig, cam_aug, size=(H, W), mask=m, crop=crop.int(), flip=flip,
                                       backend=backend)
        assert_close(got, w_, 1e-10, what=f"mask {name}")
    cam_t = cam_orig.detach().transpose(1, 2).contiguous().transpose(1, 2)
    got = sgc_fast.contrast_logits(cam_t, cam_aug, size=(H, W), mask=mask, crop=crop, flip=flip, backend=backend)
    assert_close(got, want, 1e-10, what="transposed cam_orig")


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_eps_and_temperature(backend):
    views = random_views(3, 6, 5, 3, 33, 17, "both")
    cams = [sgc_fast.batched_cam(f, g, backend=backend) for f, g in
            ((views.feats_orig, views.grads_orig), (views.feats_aug, views.grads_aug))]
    for eps, temperature in ((1e-3, 0.1), (1e-12, 2.0)):
        got = sgc_fast.contrast_logits(*cams, backend=backend, eps=eps, temperature=temperature, **views.frame())
        want = rs.contrast_logits(*cams, eps=eps, temperature=temperature, **views.frame())
        assert_close(got, want, 1e-10, what=f"eps={eps} T={temperature}")
