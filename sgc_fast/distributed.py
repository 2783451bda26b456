"""Contrastive negatives across processes (``torch.distributed``) and across chunks of one batch.

The SGC/CGC term contrasts each sample's masked CAM with the other samples' masked CAMs. Which samples
count as "the others" is a choice that changes the objective:

* ``local``: the batch passed to the loss (one process: the whole batch; under DDP: this process's share);
* ``global``: the batch of every process in the group, gathered with autograd
  (:func:`gather_negatives`): the loss on each process equals the single-process loss over the
  concatenated global batch, restricted to this process's rows, and DDP's gradient averaging makes the
  gradient that of the global mean;
* ``chunk``: rows split into chunks of ``n`` with negatives inside the chunk only, which is what the
  research code's ``nn.DataParallel`` computes on one machine (each GPU replica builds its own logits:
  ``global batch / #GPUs - 1`` negatives).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["NEGATIVES", "group_size", "gather_negatives"]

NEGATIVES = ("local", "global")


def group_size(group=None) -> int:
    """World size of ``group`` (the default group for ``None``), 1 without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def gather_negatives(cam: torch.Tensor, mask: torch.Tensor | None = None, group=None):
    """Every process's ``cam [B, h, w]`` (and ``mask [B, H, W]``) concatenated along the batch, in rank order.

    Returns ``(neg_cam [W*B, h, w], neg_mask [W*B, H, W] uint8 or None, self_index [B])`` for
    :func:`sgc_fast.contrast_logits`: ``self_index[b] = rank * B + b`` is this process's own row. The CAMs are
    gathered with autograd (``torch.distributed.nn.functional.all_gather``: the backward sums every process's
    gradient of its own rows), the masks without. Every process must call it with the same ``B``, ``h``,
    ``w`` (and mask size), as after a ``DistributedSampler`` with ``drop_last``.
    """
    if not isinstance(cam, torch.Tensor) or cam.dim() != 3:
        raise ValueError(f"cam: expected a [B, h, w] tensor, got {type(cam).__name__} "
                         f"{list(cam.shape) if isinstance(cam, torch.Tensor) else ''}".rstrip())
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.shape[0] != cam.shape[0]):
        raise ValueError(f"mask: expected a [B, H, W] tensor with B = {cam.shape[0]}, got "
                         f"{list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    B = cam.shape[0]
    world = group_size(group)
    if world == 1:
        index = torch.arange(B, device=cam.device)
        return cam, (mask != 0).to(torch.uint8) if mask is not None else None, index
    from torch.distributed.nn.functional import all_gather

    rank = dist.get_rank(group)
    neg_cam = torch.cat(all_gather(cam.contiguous(), group=group), 0)
    neg_mask = None
    if mask is not None:
        m = (mask != 0).to(torch.uint8).contiguous()
        parts = [torch.empty_like(m) for _ in range(world)]
        dist.all_gather(parts, m, group=group)
        neg_mask = torch.cat(parts, 0)
    index = torch.arange(B, device=cam.device) + rank * B
    return neg_cam, neg_mask, index
