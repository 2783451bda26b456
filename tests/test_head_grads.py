"""head_grads (closed-form gradient of a GAP + Linear head, stride-0 view) against autograd's
target_grads on a torchvision ResNet-18: same CAM, same loss, same parameter gradients.

Float64 model in eval mode (batch-norm running statistics: every forward is the same function), small
images (80x80 -> layer4 3x3) to stay fast.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from problem import assert_close, random_crop, random_mask

import sgc_fast

BACKENDS = ("reference", "cpu")
IMAGE = 80  # layer4 of a ResNet downsamples by 32 (rounded up): 3x3


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).double().eval()
    with torch.no_grad():  # mostly positive class weights: the CAMs of a random net are then not all zero
        model.fc.weight.uniform_(-0.02, 0.1)
    return model


def forward(model, images):
    with sgc_fast.capture_feats(model, "layer4") as cap:
        logits = model(images)
    return logits, cap.feats


def loss_and_param_grads(model, images_orig, images_aug, *, grads_from, backend, kind, frame):
    model.zero_grad()
    logits_orig, feats_orig = forward(model, images_orig)
    logits_aug, feats_aug = forward(model, images_aug)
    targets = logits_orig.argmax(1)
    if grads_from == "head":
        grads_orig = sgc_fast.head_grads(model.fc.weight, feats_orig, targets)
        grads_aug = sgc_fast.head_grads(model.fc.weight, feats_aug, targets)
    else:
        grads_orig = sgc_fast.target_grads(logits_orig, feats_orig, targets, create_graph=True)
        grads_aug = sgc_fast.target_grads(logits_aug, feats_aug, targets, create_graph=True)
    cam = sgc_fast.batched_cam(feats_orig, grads_orig, kind, backend=backend)
    loss = sgc_fast.saliency_contrast_loss(feats_orig, grads_orig, feats_aug, grads_aug, kind=kind, backend=backend,
                                           **frame)
    loss.backward()
    grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    return cam.detach(), loss.detach(), grads


@pytest.mark.parametrize("kind", ["hires", "grad"])
@pytest.mark.parametrize("method", ["sgc", "cgc"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_head_grads_match_target_grads(resnet, backend, method, kind):
    B, H, W = 3, IMAGE, IMAGE
    images_orig = torch.randn(B, 3, H, W, dtype=torch.float64)
    images_aug = torch.randn(B, 3, H, W, dtype=torch.float64)
    crop, flip = random_crop(B, H, W) if method == "cgc" else (None, None)
    frame = dict(mask=random_mask(B, H, W) if method == "sgc" else None, crop=crop, flip=flip, size=(H, W))
    cam_a, loss_a, grads_a = loss_and_param_grads(resnet, images_orig, images_aug, grads_from="autograd",
                                                  backend=backend, kind=kind, frame=frame)
    cam_h, loss_h, grads_h = loss_and_param_grads(resnet, images_orig, images_aug, grads_from="head",
                                                  backend=backend, kind=kind, frame=frame)
    assert cam_a.shape == (B, 3, 3) and cam_a.max() > 0
    assert_close(cam_h, cam_a, 1e-12, what="CAM")
    assert_close(loss_h, loss_a, 1e-12, what="loss")
    for name in grads_a:
        assert_close(grads_h[name], grads_a[name], 1e-9, atol=1e-15, what=f"d{name}")
    # the CAM term reaches the head's weight and the backbone
    assert grads_h["fc.weight"].abs().max() > 0 and grads_h["conv1.weight"].abs().max() > 0


def test_head_grads_is_a_stride0_view(resnet):
    B, K, h, w = 2, 512, 3, 3
    feats = torch.rand(B, K, h, w, dtype=torch.float64)
    targets = torch.tensor([3, 7])
    grads = sgc_fast.head_grads(resnet.fc.weight, feats, targets)
    assert grads.shape == (B, K, h, w) and grads.stride()[2:] == (0, 0)
    assert torch.equal(grads[:, :, 1, 2], resnet.fc.weight[targets] / (h * w))


def test_head_path_backward_never_expands_dgrads(resnet):
    """cpu backend: the CAM's autograd edge for grads leads to the compact [B, K] gradient (the division
    of head_grads), not to an ExpandBackward that would need a full-size dG."""
    feats = torch.rand(2, 512, 3, 3, dtype=torch.float64, requires_grad=True)
    grads = sgc_fast.head_grads(resnet.fc.weight, feats, torch.tensor([1, 2]))
    cam = sgc_fast.batched_cam(feats, grads, backend="cpu")
    edges = [type(fn).__name__ for fn, _ in cam.grad_fn.next_functions if fn is not None]
    assert not any("Expand" in e for e in edges), edges
    cam_ref = sgc_fast.batched_cam(feats, grads, backend="reference")
    weight_grads = [torch.autograd.grad(c.sum(), resnet.fc.weight, retain_graph=True)[0] for c in (cam, cam_ref)]
    assert_close(weight_grads[0], weight_grads[1], 1e-12, what="d fc.weight")
