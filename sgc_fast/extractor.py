"""``CAM``: batched, differentiable HiRes-CAM / Grad-CAM of any model, on the model's device.

One forward pass per batch; the maps come out as a ``[B, h, w]`` (or upsampled ``[B, H, W]``) tensor on the
model's device -- no numpy, no per-image loop, no ``.grad`` written into the model's parameters.

How the gradient of each sample's target logit w.r.t. the target layer is obtained:

- ``head="linear"`` (the closed form): when the logits are exactly ``fc(mean_p feats)`` for a Linear ``fc`` of
  the model (ResNet, ResNeXt, RegNet, EfficientNet in eval mode, ...), ``G[b, k, p] = W[t_b, k] / (h w)``
  (:func:`sgc_fast.head_grads`); no autograd at all, and without ``create_graph`` the whole forward runs under
  ``no_grad``. ``head="auto"`` (the default) checks this identity on every batch (one ``[B, K] x [K, C]``
  product against the model's own logits) and takes the closed form when it holds;
- ``head="autograd"`` (and ``auto`` when the check fails: a LayerNorm or MLP head, dropout in train mode,
  a relu after the layer, ...): the layer's output is cut from the backbone's graph, so without
  ``create_graph`` the backbone runs under ``no_grad`` and ``autograd.grad`` runs through the head only.

With ``create_graph=True`` the maps are differentiable w.r.t. the model's parameters (training through the
CAM, as SGC/CGC do): the forward records the whole graph and the gradient keeps its own.

Wrappers: ``DistributedDataParallel``/``DataParallel`` (``module.``) are called as they are, the layer is found
in the wrapped model; a ``torch.compile``'d model (``_orig_mod.``) is traced once more with the target layer
as an extra output (torchvision's FX feature extractor, compiled), because hooks added to an already compiled
model are not seen by its compiled code. That compiled form serves the closed form (with or without
``create_graph``); the autograd form, and models FX cannot trace, run the original module eagerly.
"""

from __future__ import annotations

import contextlib
import numbers
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cam import head_grads, plain_name, unwrap_model
from .ops import batched_cam

__all__ = ["CAM"]

_HEADS = ("auto", "linear", "autograd")
# |logits - fc(mean feats)| <= tol * (1 + max |logits|): the check that the head is GAP + Linear. A relu,
# LayerNorm or MLP between the pool and the logits misses it by orders of magnitude more than rounding.
_HEAD_TOL = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4, torch.float64: 1e-9}
# (model, target layer) -> {model.training: the last call found a GAP + Linear head}; shared by the extractors of
# one model, so that a CAM built per batch also starts with the whole forward under no_grad
_LINEAR_SEEN: weakref.WeakKeyDictionary[nn.Module, dict[bool, bool]] = weakref.WeakKeyDictionary()


class _Tap:
    """A forward hook on the target layer for one call: records its output and, in ``cut`` mode, hands
    the rest of the model a copy of it that starts a fresh graph, with gradients enabled from there on."""

    __slots__ = ("cut", "feats")

    def __init__(self, cut: bool) -> None:
        self.cut = cut
        self.feats: torch.Tensor | None = None  # stays None when the layer does not run

    def __call__(self, module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"target_layer: {type(module).__name__} returned {type(output).__name__}, not a tensor "
                "(pass reshape= to turn it into [B, K, h, w], or pick another layer)"
            )
        if self.cut:
            torch.set_grad_enabled(True)
            self.feats = output.detach().requires_grad_(True)
        else:
            self.feats = output
        # the rest of the model gets a copy: an in-place op after the layer (DenseNet's relu) can neither
        # change the recorded activations nor trip autograd over a modified leaf
        return self.feats.clone() if self.feats.requires_grad else output


class CAM:
    """HiRes-CAM / Grad-CAM extractor for any model whose target layer outputs ``[B, K, h, w]``.

    Example::

        cam = sgc_fast.CAM(model, "layer4")          # model in eval mode, any device
        maps = cam(images)                           # [B, 7, 7] at 224 px, for the predicted classes
        maps = cam(images, targets=labels, size="input")   # [B, 224, 224], for given classes

    Args:
        model: the classifier (``DistributedDataParallel``/``DataParallel``-wrapped and ``torch.compile``'d
            models are accepted); its forward returns ``[B, C]`` logits.
        target_layer: the layer, or its dotted name (``"layer4"``; ``module.``/``_orig_mod.`` prefixes allowed).
        kind: ``"hires"`` (``relu(sum_k G * A)``, what SGC/CGC train with) or ``"grad"`` (classic Grad-CAM,
            ``relu(sum_k mean_p(G) * A)``). For a GAP + Linear head the two are the same map.
        head: ``"auto"``, ``"linear"`` (require the closed form; an error when the head is not GAP + Linear)
            or ``"autograd"``. See the module docs.
        reshape: optional callable applied to the layer's output (and to its gradient) to give ``[B, K, h, w]``,
            e.g. for transformer tokens.
        backend: :func:`sgc_fast.batched_cam` backend (default: the fastest for the device).

    Hooks live for one call only and are removed when it returns or raises; the extractor keeps no tensor
    of a call. Attribute ``last_head`` says which form the last call used (``"linear"`` or ``"autograd"``).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str = "layer4",
        kind: str = "hires",
        *,
        head: str = "auto",
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        backend: str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if kind not in ("hires", "grad"):
            raise ValueError(f"kind: expected 'hires' or 'grad', got {kind!r}")
        if head not in _HEADS:
            raise ValueError(f"head: expected one of {_HEADS}, got {head!r}")
        if reshape is not None and not callable(reshape):
            raise TypeError(f"reshape: expected a callable or None, got {type(reshape).__name__}")
        self.model = model
        self.kind = kind
        self.head = head
        self.reshape = reshape
        self.backend = backend
        self._inner = unwrap_model(model)
        self._compiled = isinstance(getattr(model, "_orig_mod", None), nn.Module)
        self.layer, self.layer_name = self._find_layer(target_layer)
        self._fx: nn.Module | None = None  # the compiled feature extractor (compiled models only)
        self._fx_failed: str | None = None
        self._linear_seen = _LINEAR_SEEN.setdefault(self.layer, {})
        self.last_head: str | None = None

    # ------------------------------------------------------------------------------------------------------
    def _find_layer(self, target_layer) -> tuple[nn.Module, str]:
        names = {id(m): n for n, m in self._inner.named_modules()}
        if isinstance(target_layer, nn.Module):
            if id(target_layer) not in names:
                raise ValueError(f"target_layer: {type(target_layer).__name__} is not a submodule of the model")
            return target_layer, names[id(target_layer)]
        if not isinstance(target_layer, str) or not plain_name(target_layer):
            raise ValueError(f"target_layer: expected a submodule or its dotted name, got {target_layer!r}")
        name = plain_name(target_layer)
        try:
            return self._inner.get_submodule(name), name
        except AttributeError:
            children = [n for n, _ in self._inner.named_children()]
            raise ValueError(
                f"target_layer: {target_layer!r} is not a submodule of the model (top-level children: {children})"
            ) from None

    def _linear_candidates(self, K: int, C: int) -> list[nn.Linear]:
        return [
            m for m in self._inner.modules() if isinstance(m, nn.Linear) and m.in_features == K and m.out_features == C
        ]

    def _linear_head(self, feats: torch.Tensor, logits: torch.Tensor) -> nn.Linear | None:
        """The Linear ``fc`` of the model with ``logits == fc(mean_p feats)`` on this batch, if there is one."""
        if feats.dim() != 4 or not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            return None
        B, K = feats.shape[:2]
        if logits.shape[0] != B:
            return None
        with torch.no_grad():
            pooled = feats.detach().mean(dim=(2, 3))
            want = logits.detach()
            tol = _HEAD_TOL.get(want.dtype, 1e-4) * (1.0 + float(want.abs().max())) if want.numel() else 0.0
            for fc in self._linear_candidates(K, logits.shape[1]):
                got = F.linear(pooled.to(fc.weight.dtype), fc.weight, fc.bias).to(want.dtype)
                if float((got - want).abs().max()) <= tol:
                    return fc
        return None

    # ------------------------------------------------------------------------------------------------------
    def _forward_eager(self, images: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward with the tap. ``mode``: ``"graph"`` (the whole graph, for ``create_graph``), ``"cut"``
        (backbone under no_grad, the head from a fresh leaf) or ``"no_grad"`` (nothing recorded)."""
        tap = _Tap(cut=mode == "cut")
        handle = self.layer.register_forward_hook(tap)
        # a compiled model's code does not see hooks added after it was compiled: run its original module
        model = self._inner if self._compiled else self.model
        try:
            if mode == "graph":
                with torch.enable_grad():
                    logits = model(images)
            else:
                with torch.no_grad():
                    try:
                        logits = model(images)
                    finally:
                        torch.set_grad_enabled(False)  # a cut switched it on; the with-block restores the caller's
        finally:
            handle.remove()
        if tap.feats is None:
            raise RuntimeError(
                f"target_layer: {self.layer_name!r} did not run in the model's forward"
                + (" (hooks added after torch.compile are not seen by compiled code)" if self._compiled else "")
            )
        return tap.feats, logits

    def _forward_compiled(self, images: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(feats, logits) from the compiled FX feature extractor, or None when the model cannot be traced."""
        if self._fx is None and self._fx_failed is None:
            try:
                from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

                _, eval_nodes = get_graph_node_names(self._inner)
                fx = create_feature_extractor(self._inner, {self.layer_name: "feats", eval_nodes[-1]: "logits"})
                self._fx = torch.compile(fx)
            except Exception as exc:  # noqa: BLE001 - untraceable models run eagerly instead
                self._fx_failed = f"{type(exc).__name__}: {exc}"
        if self._fx is None:
            return None
        with torch.set_grad_enabled(grad):
            out = self._fx(images)
        return out["feats"], out["logits"]

    # ------------------------------------------------------------------------------------------------------
    def _targets(self, targets, logits: torch.Tensor) -> torch.Tensor:
        B, C = logits.shape
        if targets is None:
            return logits.detach().argmax(1)
        if isinstance(targets, (bool, str)) or (
            not isinstance(targets, (numbers.Integral, torch.Tensor, Sequence)) and not hasattr(targets, "__array__")
        ):
            raise TypeError(f"targets: expected None, an int or [B] class indices, got {type(targets).__name__}")
        if isinstance(targets, numbers.Integral):
            if not 0 <= int(targets) < C:
                raise ValueError(f"targets: class {int(targets)} out of range [0, {C})")
            return torch.full((B,), int(targets), dtype=torch.long, device=logits.device)
        if isinstance(targets, torch.Tensor):
            t = targets
        else:
            try:
                t = torch.as_tensor(targets)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"targets: expected integer class indices, got {targets!r:.60}") from None
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise TypeError(f"targets: expected integer class indices, got dtype {t.dtype}")
        if t.shape != (B,):
            raise ValueError(f"targets: expected shape [{B}] (one class per image), got {list(t.shape)}")
        if t.device.type == "cpu" and B and not (0 <= int(t.min()) and int(t.max()) < C):
            raise ValueError(f"targets: class indices must lie in [0, {C}), got min {int(t.min())} max {int(t.max())}")
        return t.to(device=logits.device, dtype=torch.long)

    @staticmethod
    def _size(size, images: torch.Tensor) -> tuple[int, int] | None:
        if size is None:
            return None
        if isinstance(size, str):
            if size != "input":
                raise ValueError(f"size: expected None, 'input', an int or (H, W), got {size!r}")
            return int(images.shape[-2]), int(images.shape[-1])
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            size = (size, size)
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise ValueError(f"size: expected None, 'input', a positive int or (H, W), got {size!r}")
        return int(size[0]), int(size[1])

    # ------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        images: torch.Tensor,
        targets: int | Sequence[int] | torch.Tensor | None = None,
        *,
        size: int | tuple[int, int] | str | None = None,
        create_graph: bool = False,
        normalize: bool = False,
        return_logits: bool = False,
    ):
        """The CAMs of a batch.

        Args:
            images: the model's input ``[B, ...]`` (any tensor the model takes).
            targets: class per image: ``None`` (the predicted class), an int (the same class for all) or
                ``[B]`` indices (tensor, list or array).
            size: ``None`` for the layer's ``[B, h, w]``; ``"input"`` for the images' ``H x W``; an int or
                ``(H, W)``: bilinear upsampling (``align_corners=False``) of the maps.
            create_graph: keep the maps differentiable w.r.t. the model's parameters (training through the
                CAM). Without it the maps are detached and nothing is kept.
            normalize: scale each map to ``[0, 1]`` (``(x - min) / (max - min)``; an all-zero map stays zero).
            return_logits: also return the model's ``[B, C]`` logits.

        Returns:
            ``maps`` (float32; float64 for float64 models), or ``(maps, logits)``.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a tensor, got {type(images).__name__}")
        if images.dim() == 0 or images.shape[0] == 0:
            raise ValueError(f"images: expected a non-empty batch [B, ...], got shape {list(images.shape)}")
        out_size = self._size(size, images)
        with torch.enable_grad() if create_graph else contextlib.nullcontext():
            cam, logits = self._maps(images, targets, create_graph)
        if out_size is not None and tuple(cam.shape[1:]) != out_size:
            cam = F.interpolate(cam[:, None], size=out_size, mode="bilinear", align_corners=False)[:, 0]
        if normalize:
            flat = cam.flatten(1)
            lo = flat.min(1).values[:, None, None]
            span = (flat.max(1).values[:, None, None] - lo).clamp_min(torch.finfo(cam.dtype).tiny)
            cam = (cam - lo) / span
        if not create_graph:
            logits = logits.detach()
        return (cam, logits) if return_logits else cam

    def _as_map(self, raw: torch.Tensor) -> torch.Tensor:
        """The layer's output as ``[B, K, h, w]`` (through ``reshape`` when given)."""
        feats = self.reshape(raw) if self.reshape is not None else raw
        if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
            raise ValueError(
                f"target_layer: expected a [B, K, h, w] output, got {list(getattr(feats, 'shape', []))}"
                + ("" if self.reshape is not None else " (pass reshape= to convert it)")
            )
        return feats

    def _forward(self, images: torch.Tensor, create_graph: bool):
        """``(raw layer output, feats [B, K, h, w], logits, fc)`` from the cheapest forward that serves the call;
        ``fc`` is the Linear of a GAP + Linear head checked on this batch, or None."""
        closed = self.head != "autograd"
        if closed and self._compiled and self.reshape is None:
            compiled = self._forward_compiled(images, grad=create_graph)
            if compiled is not None:
                feats, logits = compiled
                fc = self._linear_head(feats, logits)
                if fc is not None:
                    return feats, feats, logits, fc
        if closed and not create_graph and self._linear_seen.get(self._inner.training):
            # the head was GAP + Linear last time: the whole forward under no_grad, nothing to cut
            raw, logits = self._forward_eager(images, "no_grad")
            feats = self._as_map(raw)
            fc = self._linear_head(feats, logits)
            if fc is not None:
                return raw, feats, logits, fc
        raw, logits = self._forward_eager(images, "graph" if create_graph else "cut")
        feats = self._as_map(raw)
        return raw, feats, logits, self._linear_head(feats, logits) if closed else None

    def _maps(self, images: torch.Tensor, targets, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raw, feats, logits, fc = self._forward(images, create_graph)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != feats.shape[0]:
            raise ValueError(
                f"model: expected [B, C] logits with B = {feats.shape[0]}, got {list(getattr(logits, 'shape', []))}"
            )
        t = self._targets(targets, logits)
        self._linear_seen[self._inner.training] = fc is not None
        if fc is not None:
            self.last_head = "linear"
            weight = fc.weight if create_graph else fc.weight.detach()
            grads = head_grads(weight, feats, t)
            cam = batched_cam(feats if create_graph else feats.detach(), grads, self.kind, self.backend)
        elif self.head == "linear":
            raise ValueError(
                "head: 'linear' needs logits == fc(mean over space of the target layer) for a Linear fc of the "
                "model, which does not hold here (use head='auto' or 'autograd')"
            )
        else:
            self.last_head = "autograd"
            score = logits.gather(1, t[:, None]).sum()
            try:
                (grads,) = torch.autograd.grad(score, raw, create_graph=create_graph, retain_graph=create_graph)
            except RuntimeError as exc:
                raise RuntimeError(f"target_layer: the logits do not depend on {self.layer_name!r} ({exc})") from None
            if self.reshape is not None:
                grads = self.reshape(grads)
            if not create_graph:
                feats, grads = feats.detach(), grads.detach()
            cam = batched_cam(feats, grads, self.kind, self.backend)
        return cam, logits

    def __enter__(self) -> CAM:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __repr__(self) -> str:
        return f"CAM(layer={self.layer_name!r}, kind={self.kind!r}, head={self.head!r})"
