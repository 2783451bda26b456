"""One training step, one epoch, validation, and the JSON-lines step log.

Loss of a step (spec §4.2, the supervised scripts):
``CE(xe) + CE(orig) + CE(aug) + lambda * term`` with ``term`` from :class:`sgc_fast.SGCLoss` (masked
view vs original view), :class:`sgc_fast.CGCLoss` (crop view vs warped original view) or
:class:`sgc_fast.L2ConsistencyLoss` (crop frame, the research L2 baseline); ``baseline`` is
``CE(xe)`` alone. Each view is a separate forward in train mode (BatchNorm statistics per view, as
upstream). The CAM target of both views is the original view's prediction, taken on the device.

Under ``torchrun`` the model is a ``DistributedDataParallel``; every rank runs the same number of steps, a
step whose loss is not finite on any rank is skipped on every rank (the per-step loss values are summed over
the ranks anyway, for the log), and validation is sharded and its counts summed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..loss import CGCLoss, L2ConsistencyLoss, SGCLoss
from .dist import World, all_sum
from .models import cam_grads, forward_feats

__all__ = ["AMP", "JsonlLog", "SemiSupervisedLoader", "TensorBoard", "NonFiniteLossError", "consistency_term", "train_step",
           "train_one_epoch", "evaluate"]

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


class TensorBoard:
    """TensorBoard event files in ``folder`` when the ``tensorboard`` package is installed (else nothing)."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self._writer = None
        if folder is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the JSON lines are the log
                return
            self._writer = SummaryWriter(log_dir=str(folder))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, prefix: str, step: int, **values) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class AMP:
    """Mixed precision of the forward: ``"none"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + GradScaler).
    The fused ops take the reduced-precision activations as they are and compute in float32."""

    DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in ("none", *self.DTYPES):
            raise ValueError(f"amp: expected 'none', 'bf16' or 'fp16', got {mode!r}")
        self.mode, self.device_type = mode, device.type
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self):
        if self.mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.DTYPES[self.mode])


class SemiSupervisedLoader:
    """One epoch = one pass over the labelled loader; each labelled batch (``xe``, ``target``: the cross-entropy)
    is paired with the next unlabelled batch (the views of the consistency term, whose labels are never used),
    the unlabelled loader restarting when it runs out (upstream.md §6)."""

    VIEWS = ("orig", "aug", "mask", "crop", "flip")

    def __init__(self, labelled, unlabelled) -> None:
        self.labelled, self.unlabelled = labelled, unlabelled

    def __len__(self) -> int:
        return len(self.labelled)

    def __iter__(self):
        views = iter(self.unlabelled)
        for batch in self.labelled:
            try:
                u = next(views)
            except StopIteration:
                views = iter(self.unlabelled)
                u = next(views)
            yield {"xe": batch["xe"], "target": batch["target"], "semi": True,
                   "replaced": torch.cat([batch["replaced"], u["replaced"]]) if "replaced" in u else batch["replaced"],
                   **{k: u[k] for k in self.VIEWS if k in u}}


class NonFiniteLossError(FloatingPointError):
    """Too many steps in a row had a non-finite loss (``--max-bad-steps``)."""


def consistency_term(method: str, image_size: int, temperature: float, negatives: str = "local",
                     chunk: int | None = None) -> nn.Module | None:
    """The ``lambda``-weighted term of ``method`` (None for ``baseline``); ``negatives``/``chunk`` as in
    :class:`sgc_fast.SGCLoss`."""
    size = (image_size, image_size)
    if method == "sgc":
        return SGCLoss(temperature=temperature, negatives=negatives, chunk=chunk)
    if method == "cgc":
        return CGCLoss(size=size, temperature=temperature, negatives=negatives, chunk=chunk)
    if method == "l2":
        return L2ConsistencyLoss(size=size)
    if method == "baseline":
        return None
    raise ValueError(f"method: expected sgc, cgc, l2 or baseline, got {method!r}")


def _full(x: torch.Tensor) -> torch.Tensor:
    """float32 for the half-precision outputs of autocast; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def train_step(model: nn.Module, batch: dict, method: str, term_fn: nn.Module | None, lambda_: float,
               device: torch.device, memory_format=torch.contiguous_format,
               single_forward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch from :func:`sgc_fast.data.views.collate_views`. Returns ``(loss, parts)`` with
    ``parts`` = the detached values of :data:`PARTS` as one float32 tensor (read back with a single sync).
    Run it under autocast for mixed precision. ``single_forward``: the three views go through the model as one
    batch (one forward, larger kernels; BatchNorm then normalises the three views together, unlike upstream's
    three train-mode forwards, which remain the default)."""
    nb = device.type == "cuda"

    def view(name):
        return batch[name].to(device, non_blocking=nb).contiguous(memory_format=memory_format)

    y = batch["target"].to(device, non_blocking=nb)
    joint = single_forward and method != "baseline"
    if joint:
        views = [view("xe"), view("orig"), view("aug")]
        logits_all, feats_all = forward_feats(model, torch.cat(views))
        sizes = [v.shape[0] for v in views]
        logits_xe, logits_orig, logits_aug = logits_all.split(sizes)
        _, feats_orig, feats_aug = feats_all.split(sizes)
    else:
        logits_xe = model(view("xe"))
    ce_xe = F.cross_entropy(_full(logits_xe), y)
    acc1 = (logits_xe.detach().argmax(1) == y).float().mean() * 100
    zero = ce_xe.detach().new_zeros(())
    if method == "baseline":
        return ce_xe, torch.stack([ce_xe.detach(), ce_xe.detach(), zero, zero, zero, acc1])
    if not joint:
        logits_orig, feats_orig = forward_feats(model, view("orig"))
        logits_aug, feats_aug = forward_feats(model, view("aug"))
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
    if batch.get("semi"):  # semi-supervised: the views are unlabelled, only xe has a label
        ce_orig = ce_aug = zero
    else:
        ce_orig = F.cross_entropy(_full(logits_orig), y)
        ce_aug = F.cross_entropy(_full(logits_aug), y)
    term = _full(term)
    loss = ce_xe + ce_orig + ce_aug + lambda_ * term
    parts = torch.stack([loss.detach(), ce_xe.detach(), ce_orig.detach(), ce_aug.detach(), term.detach(), acc1])
    return loss, parts


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *, method: str,
                    term_fn: nn.Module | None, lambda_: float, device: torch.device, epoch: int,
                    log: JsonlLog, print_freq: int = 10, progress: bool = True, world: World | None = None,
                    amp: AMP | None = None, memory_format=torch.contiguous_format, max_bad_steps: int = 5,
                    checkpoint_every: int = 0, on_checkpoint=None, start_step: int = 0, partial: dict | None = None,
                    board: TensorBoard | None = None, single_forward: bool = False) -> dict:
    """One pass over ``loader``; logs every step; returns the epoch means of :data:`PARTS` (over the ranks) and
    ``skipped_steps``.

    A step whose loss is NaN or infinite (on any rank) is not applied (no ``optimizer.step()``); after
    ``max_bad_steps`` such steps in a row :class:`NonFiniteLossError` stops the run, before a checkpoint of the
    bad state is written. ``checkpoint_every > 0`` calls ``on_checkpoint(epoch, steps_done, sums, n, skipped)``
    every that many steps; ``start_step``/``partial`` continue an epoch from such a checkpoint.
    """
    world = world or World()
    amp = amp or AMP("none", device)
    model.train()
    sums = torch.zeros(len(PARTS), dtype=torch.float64)
    n, skipped, bad_run, replaced = 0, 0, 0, 0
    if partial is not None:
        sums, n, skipped = partial["sums"].clone().to(torch.float64), int(partial["n"]), int(partial["skipped"])
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    step = start_step - 1
    for step, batch in enumerate(bar, start=start_step):
        if "replaced" in batch:  # undecodable images the dataset replaced by the next ones (CPU tensor: no sync)
            replaced += int(batch["replaced"].sum())
        with amp.autocast():
            loss, parts = train_step(model, batch, method, term_fn, lambda_, device, memory_format, single_forward)
        optimizer.zero_grad(set_to_none=True)
        if amp.scaler is not None:
            amp.scaler.scale(loss).backward()
        else:
            loss.backward()
        parts = all_sum(parts.float(), world) / world.size  # the global batch's values; NaN if any rank's is
        values = parts.tolist()  # the step's one host sync
        finite = all(abs(v) != float("inf") and v == v for v in values[:5])
        if finite:
            if amp.scaler is not None:
                amp.scaler.step(optimizer)
                amp.scaler.update()
            else:
                optimizer.step()
            bad_run = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            skipped, bad_run = skipped + 1, bad_run + 1
            if amp.scaler is not None:  # an overflow in the fp16 forward: retry with half the scale
                amp.scaler.update(amp.scaler.get_scale() * amp.scaler.get_backoff_factor())
            log.write(kind="skip", epoch=epoch, step=step, **dict(zip(PARTS, values, strict=True)))
            if bad_run >= max_bad_steps:
                raise NonFiniteLossError(
                    f"epoch {epoch} step {step}: {bad_run} steps in a row with a non-finite loss "
                    f"{dict(zip(PARTS, values, strict=True))}; stopped (--max-bad-steps {max_bad_steps}); "
                    f"the last checkpoint is the last good state")
        t1 = time.perf_counter()
        B = batch["target"].shape[0] * world.size
        record = dict(zip(PARTS, values, strict=True))
        log.write(kind="train", epoch=epoch, step=step, lr=optimizer.param_groups[0]["lr"], batch=B,
                  images_per_s=B / max(t1 - t0, 1e-9), applied=finite, **record)
        t0 = t1
        if finite:
            sums += torch.tensor(values, dtype=torch.float64)
            n += 1
        if board is not None and finite and step % max(print_freq, 1) == 0:
            board.scalars("train", epoch * len(loader) + step, **record)
        if progress and (step % max(print_freq, 1) == 0):
            bar.set_postfix(loss=f"{values[0]:.4f}", term=f"{values[4]:.4f}", acc1=f"{values[5]:.1f}")
        if checkpoint_every and on_checkpoint is not None and (step + 1) % checkpoint_every == 0:
            on_checkpoint(epoch, step + 1, sums, n, skipped)
    bar.close()
    if step < start_step:
        raise ValueError("train: the loader yielded no batch (dataset smaller than the batch size?)")
    if n == 0:
        raise NonFiniteLossError(f"epoch {epoch}: no step had a finite loss")
    out = dict(zip(PARTS, (sums / n).tolist(), strict=True))
    out["skipped_steps"] = skipped
    out["replaced_images"] = replaced
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, progress: bool = True, *, world: World | None = None,
             memory_format=torch.contiguous_format, amp: AMP | None = None) -> tuple[float, float]:
    """Top-1 / top-5 accuracy (%) on ``loader`` of ``(images, targets)``, eval mode. Under torchrun each rank
    passes its shard and the counts are summed (``model`` must then be the plain module, not the DDP wrapper)."""
    world = world or World()
    model.eval()
    correct = torch.zeros(3, dtype=torch.int64, device=device)
    ctx = amp.autocast() if amp is not None else contextlib.nullcontext()
    for images, targets in tqdm(loader, desc="val", disable=not progress, dynamic_ncols=True, leave=False):
        images = images.to(device).contiguous(memory_format=memory_format)
        targets = targets.to(device)
        with ctx:
            logits = model(images)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == targets[:, None]
        correct += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), hit.new_tensor(targets.shape[0], dtype=torch.int64)])
    c = all_sum(correct, world).tolist()
    total = max(c[2], 1)
    return 100.0 * c[0] / total, 100.0 * c[1] / total
