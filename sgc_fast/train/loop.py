"""One training step, one epoch, validation, and the JSON-lines step log.

Loss of a step (spec §4.2, the supervised scripts):
``CE(xe) + CE(orig) + CE(aug) + lambda * term`` with ``term`` from :class:`sgc_fast.SGCLoss` (masked
view vs original view), :class:`sgc_fast.CGCLoss` (crop view vs warped original view) or
:class:`sgc_fast.L2ConsistencyLoss` (crop frame, the research L2 baseline); ``baseline`` is
``CE(xe)`` alone. Each view is a separate forward in train mode (BatchNorm statistics per view, as
upstream). The CAM target of both views is the original view's prediction, taken on the device.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..loss import CGCLoss, L2ConsistencyLoss, SGCLoss
from .models import cam_grads, forward_feats

__all__ = ["JsonlLog", "consistency_term", "train_step", "train_one_epoch", "evaluate"]

PARTS = ("loss", "ce_xe", "ce_orig", "ce_aug", "term", "acc1")


class JsonlLog:
    """Appends one JSON object per line to ``path`` (flushed per line, so a crash loses nothing)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, **record) -> None:
        if self.path is not None:
            self._f.write(json.dumps(record, sort_keys=False) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self.path is not None:
            self._f.close()


def consistency_term(method: str, image_size: int, temperature: float) -> nn.Module | None:
    """The ``lambda``-weighted term of ``method`` (None for ``baseline``)."""
    size = (image_size, image_size)
    if method == "sgc":
        return SGCLoss(temperature=temperature)
    if method == "cgc":
        return CGCLoss(size=size, temperature=temperature)
    if method == "l2":
        return L2ConsistencyLoss(size=size)
    if method == "baseline":
        return None
    raise ValueError(f"method: expected sgc, cgc, l2 or baseline, got {method!r}")


def train_step(model: nn.Module, batch: dict, method: str, term_fn: nn.Module | None, lambda_: float,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch from :func:`sgc_fast.data.views.collate_views`. Returns ``(loss, parts)`` with
    ``parts`` = the detached values of :data:`PARTS` as one tensor (read back with a single sync)."""
    nb = device.type == "cuda"
    y = batch["target"].to(device, non_blocking=nb)
    logits_xe = model(batch["xe"].to(device, non_blocking=nb))
    ce_xe = F.cross_entropy(logits_xe, y)
    acc1 = (logits_xe.detach().argmax(1) == y).float().mean() * 100
    zero = ce_xe.detach().new_zeros(())
    if method == "baseline":
        return ce_xe, torch.stack([ce_xe.detach(), ce_xe.detach(), zero, zero, zero, acc1])
    logits_orig, feats_orig = forward_feats(model, batch["orig"].to(device, non_blocking=nb))
    logits_aug, feats_aug = forward_feats(model, batch["aug"].to(device, non_blocking=nb))
    targets = logits_orig.detach().argmax(1)  # CAM target: the original view's prediction (no host trip)
    grads_orig = cam_grads(model, logits_orig, feats_orig, targets)
    grads_aug = cam_grads(model, logits_aug, feats_aug, targets)
    if method == "sgc":
        term = term_fn(feats_orig, grads_orig, feats_aug, grads_aug, batch["mask"].to(device, non_blocking=nb))
    else:
        crop = batch["crop"].to(device, non_blocking=nb)
        flip = batch["flip"].to(device, non_blocking=nb)
        if method == "cgc":
            term = term_fn(feats_orig, grads_orig, feats_aug, grads_aug, crop, flip)
        else:
            term = term_fn(feats_orig, grads_orig, feats_aug, grads_aug, crop=crop, flip=flip)
    ce_orig = F.cross_entropy(logits_orig, y)
    ce_aug = F.cross_entropy(logits_aug, y)
    loss = ce_xe + ce_orig + ce_aug + lambda_ * term
    parts = torch.stack([loss.detach(), ce_xe.detach(), ce_orig.detach(), ce_aug.detach(), term.detach(), acc1])
    return loss, parts


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, method: str,
                    term_fn: nn.Module | None, lambda_: float, device: torch.device, epoch: int,
                    log: JsonlLog, print_freq: int = 10, progress: bool = True) -> dict:
    """One pass over ``loader``; logs every step; returns the epoch means of :data:`PARTS`."""
    model.train()
    sums = torch.zeros(len(PARTS), dtype=torch.float64)
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for step, batch in enumerate(bar):
        loss, parts = train_step(model, batch, method, term_fn, lambda_, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        values = parts.tolist()  # the step's one host sync
        if not all(v == v for v in values[:5]):
            raise FloatingPointError(f"epoch {epoch} step {step}: non-finite loss {dict(zip(PARTS, values, strict=True))}")
        t1 = time.perf_counter()
        B = batch["target"].shape[0]
        record = dict(zip(PARTS, values, strict=True))
        log.write(kind="train", epoch=epoch, step=step, lr=optimizer.param_groups[0]["lr"], batch=B,
                  images_per_s=B / max(t1 - t0, 1e-9), **record)
        t0 = t1
        sums += torch.tensor(values, dtype=torch.float64)
        n += 1
        if progress and (step % max(print_freq, 1) == 0):
            bar.set_postfix(loss=f"{values[0]:.4f}", term=f"{values[4]:.4f}", acc1=f"{values[5]:.1f}")
    bar.close()
    if n == 0:
        raise ValueError("train: the loader yielded no batch (dataset smaller than the batch size?)")
    return dict(zip(PARTS, (sums / n).tolist(), strict=True))


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, progress: bool = True) -> tuple[float, float]:
    """Top-1 / top-5 accuracy (%) on ``loader`` of ``(images, targets)``, eval mode."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.int64, device=device)
    total = 0
    for images, targets in tqdm(loader, desc="val", disable=not progress, dynamic_ncols=True, leave=False):
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == targets[:, None]
        correct += torch.stack([hit[:, 0].sum(), hit.any(1).sum()])
        total += targets.shape[0]
    c = correct.tolist()
    return 100.0 * c[0] / max(total, 1), 100.0 * c[1] / max(total, 1)
