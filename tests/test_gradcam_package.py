"""sgc_fast's CAMs agree with the `grad-cam` package (pytorch_grad_cam) HiResCAM and GradCAM.

The package computes ``relu(sum_k w * A)`` on the target layer, then (base_cam.py) per layer
``scale_cam_image(cam, (W, H))`` — per image min-max scaling ``(x - min) / (1e-7 + max)`` and
``cv2.resize`` to the input size — and, aggregating the layers, ``scale_cam_image`` once more without
resizing. We apply the package's own ``scale_cam_image`` the same way to ``sgc_fast.batched_cam``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sgc_fast

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM, HiResCAM  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

BACKENDS = ("reference", "cpu")


class SmallNet(nn.Module):
    """body (conv-relu-conv(stride 2)-relu) -> feats -> head. ``head="gap"``: global average pool +
    Linear (spatially constant gradient: HiResCAM = GradCAM); ``head="flatten"``: Linear on the
    flattened map (the gradient varies over space, so the two methods differ)."""

    def __init__(self, head: str, feat_hw: tuple[int, int], channels: int = 12, num_classes: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = head
        in_features = channels if head == "gap" else channels * feat_hw[0] * feat_hw[1]
        self.fc = nn.Linear(in_features, num_classes)
        with torch.no_grad():  # mostly positive class weights: the relu rarely kills a whole CAM
            self.fc.weight.uniform_(-0.3, 1.0).div_(in_features**0.5)

    def forward(self, x):
        feats = self.body(x)
        pooled = F.adaptive_avg_pool2d(feats, 1).flatten(1) if self.head == "gap" else feats.flatten(1)
        return self.fc(pooled)


def package_pipeline(cam_lowres: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """What BaseCAM.compute_cam_per_layer + aggregate_multi_layers do to one layer's relu'd CAM."""
    H, W = image_hw
    per_layer = scale_cam_image(np.maximum(cam_lowres, 0), (W, H))[:, None]  # cv2 size is (width, height)
    return scale_cam_image(np.maximum(per_layer, 0).mean(axis=1))


@pytest.mark.parametrize("head", ["gap", "flatten"])
@pytest.mark.parametrize("method", ["hires", "grad"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_pytorch_grad_cam(backend, method, head):
    B, H, W = 4, 28, 20
    model = SmallNet(head, (H // 2, W // 2)).eval()
    images = torch.randn(B, 3, H, W)
    targets = torch.randint(0, 6, (B,))

    cam_cls = HiResCAM if method == "hires" else GradCAM
    with cam_cls(model=model, target_layers=[model.body]) as package_cam:
        expected = package_cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])

    with sgc_fast.capture_feats(model, "body") as cap:
        logits = model(images)
    grads = sgc_fast.target_grads(logits, cap.feats, targets, create_graph=False)
    cam = sgc_fast.batched_cam(cap.feats, grads, kind=method, backend=backend)
    assert cam.shape == (B, H // 2, W // 2)
    got = package_pipeline(cam.detach().numpy(), (H, W))

    assert expected.shape == got.shape == (B, H, W)
    assert (expected.max(axis=(1, 2)) > 0.99).all(), "degenerate test: a CAM is all zero"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_hires_and_grad_differ_without_gap_head():
    """Sanity of the comparison above: with a flatten head the two kinds are different maps."""
    B, H, W = 2, 28, 20
    model = SmallNet("flatten", (H // 2, W // 2)).eval()
    with sgc_fast.capture_feats(model, "body") as cap:
        logits = model(torch.randn(B, 3, H, W))
    grads = sgc_fast.target_grads(logits, cap.feats, logits.argmax(1), create_graph=False)
    hires = sgc_fast.batched_cam(cap.feats, grads, "hires")
    grad = sgc_fast.batched_cam(cap.feats, grads, "grad")
    assert (hires - grad).abs().max() > 1e-3 * hires.abs().max()
