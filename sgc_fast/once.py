"""First derivatives only: the fused backends' backward passes are not themselves differentiable.

Asked for a second derivative through them (``create_graph=True``, then a backward through the gradient), they
would silently contribute zero. :func:`first_order_only` wraps the gradients a backward returns under
``create_graph=True`` in a node whose own backward raises, naming the op and the way out
(``backend="reference"``, which is plain differentiable PyTorch).
"""

from __future__ import annotations

import torch

__all__ = ["first_order_only"]


class _FirstOrderOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, n_anchors, *tensors):
        ctx.name = name
        return tuple(g.clone() for g in tensors[n_anchors:])

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f"{ctx.name}: the gradients of the fused backends are not differentiable again (a second "
                           f"derivative through {ctx.name} was asked for); use backend='reference' for higher-order "
                           f"gradients")


def first_order_only(name: str, grads: tuple, inputs: tuple) -> tuple:
    """``grads`` as they are, unless the backward runs with ``create_graph=True`` (grad mode on): then each tensor is
    a copy whose backward raises a ``RuntimeError``. ``inputs``: every tensor the backward read (the incoming
    gradient too): the copies hang on all of them that require grad, so that any second derivative through the op
    meets the error."""
    if not torch.is_grad_enabled():
        return grads
    anchors = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    where = [i for i, g in enumerate(grads) if isinstance(g, torch.Tensor)]
    if not anchors or not where:
        return grads
    wrapped = _FirstOrderOnly.apply(name, len(anchors), *anchors, *(grads[i].detach() for i in where))
    out = list(grads)
    for i, g in zip(where, wrapped, strict=True):
        out[i] = g
    return tuple(out)
