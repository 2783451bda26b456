"""CAM inputs for any model: the target layer's activations, and gradients of each sample's target logit.

- :func:`capture_feats` records a layer's output during a forward pass (hooks removed on exit);
- :func:`target_grads` differentiates the target logits with autograd (any model; ``create_graph``
  keeps the CAM differentiable w.r.t. the parameters, as training needs);
- :func:`head_grads` gives the same gradient in closed form for a global-average-pool + Linear head
  (every ResNet): ``G[b, k, i, j] = W[t_b, k] / (h w)``, returned as a stride-0 expanded view so that
  neither it nor its gradient is ever materialised at full size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .ops import batched_cam

__all__ = ["batched_cam", "target_grads", "head_grads", "capture_feats", "Captured", "unwrap_model", "plain_name"]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # what DataParallel/DistributedDataParallel and torch.compile add


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DataParallel``/``DistributedDataParallel``/``torch.compile`` wrappers (any nesting)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def plain_name(name: str) -> str:
    """A parameter or module name without the ``module.``/``_orig_mod.`` prefixes of those wrappers."""
    for prefix in WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _check_targets(targets: torch.Tensor, B: int, num_classes: int, device) -> None:
    if not isinstance(targets, torch.Tensor) or targets.shape != (B,) or targets.dtype not in (
        torch.int32, torch.int64
    ):
        raise ValueError(f"targets: expected an integer tensor of shape [{B}], got {targets!r:.80}")
    if targets.device != device:
        raise ValueError(f"targets: on {targets.device}, expected {device}")


def target_grads(
    logits: torch.Tensor, feats: torch.Tensor, targets: torch.Tensor, create_graph: bool = True
) -> torch.Tensor:
    """``d logits[b, targets[b]] / d feats`` for every sample: ``[B, K, h, w]``.

    Args:
        logits: ``[B, C]`` model outputs, attached to the graph that produced ``feats``.
        feats: ``[B, K, h, w]`` activations of the target layer.
        targets: ``[B]`` class index per sample (e.g. ``logits.argmax(1)``).
        create_graph: keep the result differentiable (needed to train through the CAM).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits: expected [B, C], got shape {list(logits.shape)}")
    if feats.dim() != 4 or feats.shape[0] != logits.shape[0]:
        raise ValueError(f"feats: expected [{logits.shape[0]}, K, h, w], got shape {list(feats.shape)}")
    _check_targets(targets, logits.shape[0], logits.shape[1], logits.device)
    score = logits.gather(1, targets.long()[:, None]).sum()
    (grads,) = torch.autograd.grad(score, feats, create_graph=create_graph, retain_graph=True)
    return grads


def head_grads(weight: torch.Tensor, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Closed-form ``d logit_t / d feats`` of a GAP + Linear head, as an expanded ``[B, K, h, w]`` view.

    Args:
        weight: ``[C, K]`` the Linear layer's weight (``model.fc.weight``).
        feats: ``[B, K, h, w]`` the activations that are pooled (only the shape is used).
        targets: ``[B]`` class index per sample.

    The result is differentiable w.r.t. ``weight``; :func:`sgc_fast.batched_cam` recognises the view
    and never materialises it or its gradient.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight: expected [C, K], got shape {list(weight.shape)}")
    if feats.dim() != 4 or feats.shape[1] != weight.shape[1]:
        raise ValueError(f"feats: expected [B, {weight.shape[1]}, h, w], got shape {list(feats.shape)}")
    B, K, h, w = feats.shape
    _check_targets(targets, B, weight.shape[0], weight.device)
    compact = weight[targets.long()] / (h * w)
    return compact[:, :, None, None].expand(B, K, h, w)


class Captured:
    """Holds the most recent output of the captured layer (``.feats``)."""

    __slots__ = ("feats", "__weakref__")

    def __init__(self) -> None:
        self.feats: torch.Tensor | None = None


def _resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer: expected a submodule or its dotted name (e.g. 'layer4'), got {layer!r}")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"layer: {layer!r} is not a submodule of the model (top-level children: {names})") from None


@contextlib.contextmanager
def capture_feats(model: nn.Module, layer: nn.Module | str = "layer4") -> Iterator[Captured]:
    """Record ``layer``'s output on every forward pass inside the block.

    Example::

        with sgc_fast.capture_feats(model, "layer4") as cap:
            logits = model(images)
        cam = sgc_fast.batched_cam(cap.feats, sgc_fast.target_grads(logits, cap.feats, logits.argmax(1)))

    The hook holds only the :class:`Captured` record (not the model), and is removed on exit, also when
    the block raises.
    """
    module = _resolve_layer(model, layer)
    record = Captured()

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer: output of {type(_module).__name__} is {type(output).__name__}, not a tensor")
        record.feats = output

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()
