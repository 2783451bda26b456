"""An independent, unfused implementation of the SGC / CGC contrastive term, in the research code's style.

Written from the definitions only (docs / DESIGN §2), deliberately *without* importing anything from
``sgc_fast``: per-sample Python loops, full-resolution maps, ``torch.autograd.grad(create_graph=True)``
for the Grad-CAM gradients, ``F.interpolate`` for every resize. It is the second oracle of the tests:
``sgc_fast.reference`` is the library's own specification, this file is what a user of the research code
would have computed.

Shapes: ``feats``/``grads`` ``[B, K, h, w]``; maps ``[B, H, W]``; ``mask`` ``[B, H, W]`` (nonzero =
salient); ``crop`` ``[B, 4]`` = (top, left, height, width) in pixels of the ``H x W`` map; ``flip``
``[B]`` bool ("the crop was mirrored").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


class TinyNet(nn.Module):
    """conv-relu-conv-relu -> feats ``[B, K, h, w]`` -> adaptive average pool -> Linear.

    ``head="linear"`` is the GAP + Linear head of every ResNet (its Grad-CAM gradient is constant over
    space); ``head="quadratic"`` pools ``feats ** 2`` instead, so that the gradient varies over space and
    depends on ``feats`` (exercises the double backward through ``grads``).
    """

    def __init__(self, channels: int = 8, num_classes: int = 5, head: str = "linear") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.head = head
        # Mostly positive class weights: the CAMs of a freshly initialised net are then nonzero (with
        # PyTorch's symmetric default init, a sample's whole CAM is often killed by the relu).
        nn.init.uniform_(self.fc.weight, -0.3, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.relu(self.conv2(F.relu(self.conv1(x))))
        pooled_input = feats if self.head == "linear" else feats * feats
        logits = self.fc(self.pool(pooled_input).flatten(1))
        return logits, feats


# ---------------------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------------------


def gradcam_grads(logits: torch.Tensor, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d(sum_b logits[b, target[b]]) / d feats, kept differentiable (research code: create_graph=True)."""
    score = 0
    for b in range(logits.shape[0]):
        score = score + logits[b, target[b]]
    (grads,) = torch.autograd.grad(score, feats, create_graph=True, retain_graph=True)
    return grads


def cam_from(feats: torch.Tensor, grads: torch.Tensor, kind: str = "hires") -> torch.Tensor:
    """``[B, h, w]``: relu(sum_k G*A) ("hires") or relu(sum_k mean_p(G)*A) ("grad")."""
    if kind == "hires":
        cam = (grads * feats).sum(dim=1)
    elif kind == "grad":
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = (weights * feats).sum(dim=1)
    else:
        raise ValueError(kind)
    return F.relu(cam)


def upsample_and_normalise(cam: torch.Tensor, size: tuple[int, int], eps: float = EPS) -> torch.Tensor:
    """Bilinear upsampling to ``size`` and the research code's sum-normalisation, sample by sample."""
    maps = []
    for b in range(cam.shape[0]):
        m = F.interpolate(cam[b][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        m = m / (m.sum() + eps) + eps
        maps.append(m)
    return torch.stack(maps)


def warp_original(maps: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """CGC: crop each upsampled original map to the aug view's box, resize back, mirror if flipped."""
    B, H, W = maps.shape
    out = []
    for b in range(B):
        i, j, hh, ww = (int(v) for v in crop[b])
        m = maps[b, i:i + hh, j:j + ww]
        m = F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        if bool(flip[b]):
            m = torch.flip(m, dims=[1])
        out.append(m)
    return torch.stack(out)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=1)


# ---------------------------------------------------------------------------------------------------------
# The contrastive term
# ---------------------------------------------------------------------------------------------------------


def frame_maps(cam_orig, cam_aug, *, size, mask=None, crop=None, flip=None, eps=EPS):
    """(a, p): the aug view's map (masked for SGC) and the original's map in the aug frame (warped for
    CGC), both ``[B, H, W]``."""
    m_orig = upsample_and_normalise(cam_orig, size, eps)
    m_aug = upsample_and_normalise(cam_aug, size, eps)
    a = m_aug * mask.to(m_aug.dtype) if mask is not None else m_aug
    p = warp_original(m_orig, crop, flip) if crop is not None else m_orig
    return a, p


def contrast_logits(cam_orig, cam_aug, *, size, mask=None, crop=None, flip=None, temperature=0.5, eps=EPS):
    """``[B, B]``: row b = [a_b.p_b, a_b.a_j for j != b ascending] / T (unit vectors)."""
    a, p = frame_maps(cam_orig, cam_aug, size=size, mask=mask, crop=crop, flip=flip, eps=eps)
    a_hat, p_hat = _unit(a), _unit(p)
    B = a_hat.shape[0]
    rows = []
    for b in range(B):
        pos = (a_hat[b] * p_hat[b]).sum()
        negs = [(a_hat[b] * a_hat[j]).sum() for j in range(B) if j != b]
        rows.append(torch.stack([pos] + negs))
    return torch.stack(rows) / temperature


def contrast_logits_separate(cam_orig, cam_aug, neg_cam, *, size, mask=None, neg_mask=None, crop=None,
                             flip=None, self_index=None, temperature=0.5, eps=EPS):
    """``[B, 1 + N]``: row b = [a_b.p_b, a_b.n_0, ..., a_b.n_{N-1}] / T, -inf at 1 + self_index[b]."""
    a, p = frame_maps(cam_orig, cam_aug, size=size, mask=mask, crop=crop, flip=flip, eps=eps)
    n = upsample_and_normalise(neg_cam, size, eps)
    if neg_mask is not None:
        n = n * neg_mask.to(n.dtype)
    a_hat, p_hat, n_hat = _unit(a), _unit(p), _unit(n)
    rows = []
    for b in range(a_hat.shape[0]):
        pos = (a_hat[b] * p_hat[b]).sum()
        negs = []
        for k in range(n_hat.shape[0]):
            if self_index is not None and int(self_index[b]) == k:
                negs.append(pos.new_tensor(float("-inf")))
            else:
                negs.append((a_hat[b] * n_hat[k]).sum())
        rows.append(torch.stack([pos] + negs))
    return torch.stack(rows) / temperature


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every row against column 0 (the positive), mean over rows."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def contrast_loss(feats_orig, grads_orig, feats_aug, grads_aug, *, kind="hires", size, mask=None, crop=None,
                  flip=None, temperature=0.5, eps=EPS):
    """The SGC / CGC contrastive term from the target layer's activations and gradients."""
    cam_orig = cam_from(feats_orig, grads_orig, kind)
    cam_aug = cam_from(feats_aug, grads_aug, kind)
    logits = contrast_logits(cam_orig, cam_aug, size=size, mask=mask, crop=crop, flip=flip,
                             temperature=temperature, eps=eps)
    return info_nce(logits)


def l2_consistency(feats_orig, grads_orig, feats_aug, grads_aug, *, kind="hires", size, mask=None, crop=None,
                   flip=None, eps=EPS):
    """The no-contrast baseline: MSE between the L2-normalised flattened maps of the two views."""
    a, p = frame_maps(cam_from(feats_orig, grads_orig, kind), cam_from(feats_aug, grads_aug, kind), size=size,
                      mask=mask, crop=crop, flip=flip, eps=eps)
    return F.mse_loss(_unit(a), _unit(p))


def model_views(model: nn.Module, x_orig: torch.Tensor, x_aug: torch.Tensor):
    """Forward both views; targets are the argmax of the original view's logits (detached), used for both.

    Returns ``(feats_orig, grads_orig, feats_aug, grads_aug, targets)``; the grads come from
    ``autograd.grad(create_graph=True)`` so that a loss on the CAMs trains the parameters.
    """
    logits_orig, feats_orig = model(x_orig)
    logits_aug, feats_aug = model(x_aug)
    targets = logits_orig.argmax(dim=1).detach()
    grads_orig = gradcam_grads(logits_orig, feats_orig, targets)
    grads_aug = gradcam_grads(logits_aug, feats_aug, targets)
    return feats_orig, grads_orig, feats_aug, grads_aug, targets
