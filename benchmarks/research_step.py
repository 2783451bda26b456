"""The research code's SGC / CGC training step and data path, re-created from ``shared/spec/upstream.md`` (no code
of the research repositories), for ``bench_step.py`` and the equal-work test (tests/test_bench_step.py).

Data (upstream.md §3.1): every ``__getitem__`` builds the views with torchvision transforms and, for SGC, runs the
full U²-Net on the normalised centre crop (batch of one, on the CPU, **without** ``torch.no_grad``), min-max
normalises the first output and thresholds it at 0.5 into an int64 ``[1, S, S]`` mask.

Step (§1.2, §2.2, §3.2, §4): three separate train-mode forwards (xe, original, second view); the target of both CAMs
is ``np.argmax`` of the original view's logits (a host round trip); each CAM comes from
``torch.autograd.grad(create_graph=True)`` of a one-hot-weighted logit sum built in NumPy, as
``relu(sum_k G * A)``, upsampled to ``S x S`` (bilinear, align_corners False) and sum-normalised
``M / (sum M + 1e-8) + 1e-8``; SGC multiplies the second view's map by the mask, CGC crops, resizes and flips the
original map in a Python loop over the samples; both maps are L2-normalised over the ``S*S`` pixels; logits =
``[a_i.p_i, a_i.a_j (j != i)] / T``; ``CE(xe) + CE(orig) + CE(aug) + lambda * CE(logits, 0)``. The CGC flip is
applied when the flag is set (the research code's flip-bug is not reproduced: the library's views flip
deterministically, and the two steps must do the same work).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import Dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPS = 1e-8

__all__ = ["ResearchSGCData", "research_forward", "research_cam_maps", "research_loss", "research_step"]


class ResearchSGCData(Dataset):
    """``base[i] -> (PIL, label)`` to the research SGC sample ``(xe, sample, aug, pred, target)`` with the mask
    computed here, per sample, by ``u2net`` (no ``no_grad``, as the research loader)."""

    def __init__(self, base, u2net: torch.nn.Module, size: int = 224) -> None:
        self.base, self.u2net, self.size = base, u2net.eval(), size
        norm = T.Normalize(MEAN, STD)
        self.xe = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        self.center = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, target = self.base[i]
        img = img.convert("RGB")
        sample = self.center(img)
        d0 = self.u2net(sample[None])[0]  # sigmoid of the fused output, [1, 1, S, S]; graph kept (no no_grad)
        d = d0[0]
        d = (d - d.min()) / (d.max() - d.min())
        pred = torch.where(d > 0.5, torch.tensor(1), torch.tensor(0))  # int64 [1, S, S]
        aug = (pred * sample).detach()
        return self.xe(img), sample, aug, pred.detach(), target


def research_forward(model, x):
    """``forward_vanilla(x, return_feats=True)`` of a torchvision ResNet: logits and layer4's output."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return model.fc(torch.flatten(model.avgpool(feats), 1)), feats


def research_cam_maps(logits, feats, target: np.ndarray, size: int):
    """Grad-CAM of the research code, differentiable (create_graph), upsampled and sum-normalised: ``[B, S, S]``."""
    onehot = np.zeros(logits.shape, dtype=np.float32)
    onehot[np.arange(logits.shape[0]), target] = 1.0
    onehot = torch.from_numpy(onehot).to(logits.device)
    score = (onehot * logits).sum()
    (grads,) = torch.autograd.grad(score, feats, retain_graph=True, create_graph=True)
    cam = F.relu((grads * feats).sum(1))
    m = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    return m / (m.sum((1, 2), keepdim=True) + EPS) + EPS


def _warp(maps, crop, flip, size: int):
    """CGC: crop each original map to its box, resize back, mirror when flagged (a Python loop, host reads)."""
    out = torch.zeros_like(maps)
    for b in range(maps.shape[0]):
        i, j, h, w = (int(v) for v in crop[b])
        m = F.interpolate(maps[b, i:i + h, j:j + w][None, None], size=(size, size), mode="bilinear",
                          align_corners=False)[0, 0]
        out[b] = m.flip(-1) if bool(flip[b]) else m
    return out


def research_loss(model, xe, images, aug, target, *, method: str, lam: float, temperature: float, mask=None,
                  crop=None, flip=None):
    """The whole research loss of one batch (views on the model's device)."""
    size = images.shape[-1]
    logits_xe = model(xe)
    logits_o, feats_o = research_forward(model, images)
    t = np.argmax(logits_o.detach().float().cpu().numpy(), axis=1)  # the research code's NumPy round trip
    m_o = research_cam_maps(logits_o, feats_o, t, size)
    logits_a, feats_a = research_forward(model, aug)
    m_a = research_cam_maps(logits_a, feats_a, t, size)
    if method == "sgc":
        m_a = m_a * mask.reshape(m_a.shape).to(m_a.dtype)
        p = m_o
    else:
        p = _warp(m_o, crop, flip, size)
    a = m_a.flatten(1)
    a = a / a.norm(dim=1, keepdim=True)
    p = p.flatten(1)
    p = p / p.norm(dim=1, keepdim=True)
    B = a.shape[0]
    pos = (a * p).sum(1, keepdim=True)
    sim = a @ a.t()
    neg = sim[~torch.eye(B, dtype=torch.bool, device=a.device)].view(B, B - 1)
    logits = torch.cat([pos, neg], 1) / temperature
    con = F.cross_entropy(logits, torch.zeros(B, dtype=torch.long, device=a.device))
    ce = F.cross_entropy(logits_xe, target) + F.cross_entropy(logits_o, target) + F.cross_entropy(logits_a, target)
    return ce + lam * con


def research_step(model, optimizer, batch, device, *, method="sgc", lam=0.5, temperature=0.5, amp=None):
    """One research training step on a batch of :class:`ResearchSGCData` (SGC) or the CGC tuple
    ``(xe, images, aug, crop [B, 4], flip [B], target)``."""
    if method == "sgc":
        xe, images, aug, pred, target = batch
        extra = {"mask": pred.to(device)}
    else:
        xe, images, aug, crop, flip, target = batch
        extra = {"crop": crop, "flip": flip}
    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else torch.autocast(device.type, enabled=False)
    with ctx:
        loss = research_loss(model, xe.to(device), images.to(device), aug.to(device), target.to(device),
                             method=method, lam=lam, temperature=temperature, **extra)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)  # the research loop reads the loss every step
