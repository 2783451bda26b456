"""The two fused ops, their fake kernels and autograd, and backend routing.

Backends:

- ``reference``: :mod:`sgc_fast.reference`, plain PyTorch, always available;
- ``cpu`` / ``cuda``: the C++ extension ``sgc_fast._C`` (ops ``sgc_fast::batched_cam`` and
  ``sgc_fast::contrast_logits``; the CUDA kernels only when the extension was built with them);
- ``triton``: Triton kernels (:mod:`sgc_fast.triton`), CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1``.

Routing happens above the dispatcher: an explicit ``backend=`` wins, then the environment variable
``SGC_FAST_BACKEND``, then the automatic choice (CUDA tensors: cuda if built, else triton; CPU
tensors: cpu if built, else reference). An explicitly requested backend that cannot run raises an
error that says why; :func:`explain_backends` reports why each candidate was or was not usable.
"""

from __future__ import annotations

import math
import numbers
import os

import torch
import torch.nn.functional as F

from . import fused, reference
from .once import first_order_only

__all__ = ["BACKENDS", "available_backends", "explain_backends", "resolve_backend", "batched_cam", "contrast_logits"]

BACKENDS = ("reference", "cpu", "cuda", "triton")

try:  # the compiled extension registers the ops' schemas and kernels
    from . import _C  # noqa: F401

    _EXT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _EXT_ERROR = f"extension sgc_fast._C not built ({exc})"


def _has_kernel(op: str, key: str) -> bool:
    return _EXT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(f"sgc_fast::{op}", key)


def _triton_reason(device: torch.device) -> str | None:
    try:
        from . import triton as sgc_triton
    except ImportError as exc:
        return f"Triton kernels unavailable ({exc})"
    return sgc_triton.unavailable_reason(device)


def _reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` (None if it can)."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"tensors on {device}"
        return _EXT_ERROR
    if backend == "cuda":
        if device.type != "cuda":
            return f"tensors on {device}"
        if _EXT_ERROR is not None:
            return _EXT_ERROR
        if not _has_kernel("batched_cam", "CUDA"):
            return "extension built without CUDA kernels (rebuild with FORCE_CUDA=1)"
        return None
    if backend == "triton":
        return _triton_reason(device)
    raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")


def explain_backends(device: torch.device | str = "cpu") -> dict[str, str]:
    """``{backend: "ok" | why not}`` for tensors on ``device``."""
    device = torch.device(device)
    return {b: _reason(b, device) or "ok" for b in BACKENDS}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    return [b for b, why in explain_backends(device).items() if why == "ok"]


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend that will run for tensors on ``device``."""
    if backend is None:
        backend = os.environ.get("SGC_FAST_BACKEND") or None
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS} or None, got {backend!r}")
        why = _reason(backend, device)
        if why is not None:
            raise RuntimeError(f"backend: {backend!r} cannot run: {why}")
        return backend
    order = ("cuda", "triton") if device.type == "cuda" else ("cpu", "reference")
    reasons = []
    for b in order:
        why = _reason(b, device)
        if why is None:
            return b
        reasons.append(f"{b}: {why}")
    if device.type == "cuda":
        return "reference"
    raise RuntimeError("no backend can run: " + "; ".join(reasons))


# ----------------------------------------------------------------------------------------------------------------
# batched_cam
# ----------------------------------------------------------------------------------------------------------------

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cam_dtype(feats: torch.Tensor, grads: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (feats.dtype, grads.dtype) else torch.float32


def _check_cam_inputs(feats: torch.Tensor, grads: torch.Tensor, kind: str) -> None:
    if kind not in ("hires", "grad"):
        raise ValueError(f"kind: expected 'hires' or 'grad', got {kind!r}")
    if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
        raise ValueError(f"feats: expected a [B, K, h, w] tensor, got {_describe(feats)}")
    if not isinstance(grads, torch.Tensor) or grads.dim() not in (2, 4):
        raise ValueError(f"grads: expected a [B, K, h, w] tensor, got {_describe(grads)}")
    if feats.dtype not in _FLOATS:
        raise TypeError(f"feats: expected a floating dtype, got {feats.dtype}")
    if grads.dtype not in _FLOATS:
        raise TypeError(f"grads: expected a floating dtype, got {grads.dtype}")
    want = tuple(feats.shape) if grads.dim() == 4 else tuple(feats.shape[:2])
    if tuple(grads.shape) != want:
        raise ValueError(f"grads: expected shape {list(want)} (from feats), got {list(grads.shape)}")
    if grads.device != feats.device:
        raise ValueError(f"grads: on {grads.device}, but feats on {feats.device}")
    if feats.shape[0] == 0 or feats.shape[1] == 0 or feats.shape[2] == 0 or feats.shape[3] == 0:
        raise ValueError(f"feats: empty shape {list(feats.shape)} (B, K, h and w must be >= 1)")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {list(x.shape)}"
    return type(x).__name__


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def compact_grads(grads: torch.Tensor) -> torch.Tensor:
    """The ``[B, K]`` form of a gradient that is constant over space, else ``grads`` unchanged.

    A spatially expanded (stride-0) view such as :func:`sgc_fast.head_grads` returns is replaced by the
    compact tensor it views, so that gradients flow to that tensor without a full-size ``dG``.
    """
    if grads.dim() != 4 or _compiling() or grads.stride(2) != 0 or grads.stride(3) != 0:
        return grads  # (under torch.compile, views have no inspectable _base: the general path)
    B, K = grads.shape[:2]
    base = grads._base
    if base is None or base.numel() != B * K or base.storage_offset() != grads.storage_offset():
        if grads.requires_grad:
            return grads  # no compact tensor to hand gradients to: keep the general path
        return grads[:, :, 0, 0]
    compact = base.reshape(B, K)
    if compact.stride() != grads.stride()[:2]:
        return grads
    return compact


if _EXT_ERROR is None:

    @torch.library.register_fake("sgc_fast::batched_cam")
    def _batched_cam_fake(feats, grads, kind):
        torch._check(feats.dim() == 4, lambda: "feats: expected [B, K, h, w]")
        torch._check(grads.dim() in (2, 4), lambda: "grads: expected [B, K, h, w] or [B, K]")
        torch._check(grads.shape[0] == feats.shape[0] and grads.shape[1] == feats.shape[1], lambda: "grads: shape")
        B, _, h, w = feats.shape
        return feats.new_empty((B, h, w), dtype=_cam_dtype(feats, grads))

    @torch.library.register_fake("sgc_fast::batched_cam_backward")
    def _batched_cam_backward_fake(grad_cam, cam, feats, grads, kind):
        return torch.empty_like(feats), torch.empty_like(grads)

    def _batched_cam_setup(ctx, inputs, output):
        feats, grads, kind = inputs
        ctx.kind = kind
        ctx.save_for_backward(feats, grads, output)

    def _batched_cam_backward(ctx, grad_cam):
        feats, grads, cam = ctx.saved_tensors
        d_feats, d_grads = torch.ops.sgc_fast.batched_cam_backward(grad_cam, cam, feats, grads, ctx.kind)
        return first_order_only("batched_cam", (d_feats, d_grads, None), (grad_cam, feats, grads))

    torch.library.register_autograd(
        "sgc_fast::batched_cam", _batched_cam_backward, setup_context=_batched_cam_setup
    )


def batched_cam(feats: torch.Tensor, grads: torch.Tensor, kind: str = "hires", backend: str | None = None):
    """CAM of every sample, ``[B, K, h, w], [B, K, h, w] -> [B, h, w]`` (float32; float64 for float64).

    ``kind="hires"``: ``relu(sum_k grads * feats)`` (what SGC/CGC train with); ``kind="grad"``: classic
    Grad-CAM, ``relu(sum_k mean_p(grads) * feats)``. ``grads`` may be any strided tensor; a spatially
    expanded view (:func:`sgc_fast.head_grads`) takes a path that never writes a full-size gradient.
    """
    _check_cam_inputs(feats, grads, kind)
    backend = resolve_backend(backend, feats.device)
    if backend == "reference":
        if grads.dim() == 2:
            grads = grads[:, :, None, None].expand_as(feats)
        return _check_cam_output(reference.batched_cam(feats, grads, kind), feats, grads)
    grads = compact_grads(grads)
    if backend == "triton":
        from .triton import backend as triton_backend

        return _check_cam_output(triton_backend.batched_cam(feats, grads, kind), feats, grads)
    return _check_cam_output(torch.ops.sgc_fast.batched_cam(feats, grads, kind), feats, grads)


def _check_cam_output(cam: torch.Tensor, feats: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Where values are checked (:func:`_check_values`; never while compiling): a CAM that is not finite is an
    error naming its cause (NaN/inf in ``feats`` or ``grads``, or a product beyond the range of the CAM's dtype)
    instead of a NaN or inf that poisons the loss. Costs one pass over the small ``[B, h, w]`` output."""
    if _compiling() or not _check_values(cam.device) or bool(torch.isfinite(cam).all()):
        return cam
    for name, t in (("feats", feats), ("grads", grads)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: holds NaN or infinite values")
    raise ValueError(f"feats: the CAM of these feats and grads overflows {cam.dtype} (max |feats| "
                     f"{feats.abs().max().item():.3g}, max |grads| {grads.abs().max().item():.3g}); pass float64 tensors")


# ----------------------------------------------------------------------------------------------------------------
# contrast_logits
# ----------------------------------------------------------------------------------------------------------------


def _cpp_sweep(pb, mask_u8, neg_mask_u8, dtype):
    return torch.ops.sgc_fast.contrast_sweep(*fused.sweep_args(pb, mask_u8, neg_mask_u8, dtype))


def _cpp_sweep_backward(pb, mask_u8, neg_mask_u8, coefs, dtype):
    return torch.ops.sgc_fast.contrast_sweep_backward(*fused.sweep_args(pb, mask_u8, neg_mask_u8, dtype), *coefs)


@torch.library.custom_op("sgc_fast::contrast_logits", mutates_args=())
def _contrast_logits_op(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    mask: torch.Tensor | None,
    crop: torch.Tensor | None,
    flip: torch.Tensor | None,
    neg_cam: torch.Tensor | None,
    neg_mask: torch.Tensor | None,
    self_index: torch.Tensor | None,
    size: list[int],
    temperature: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logits, stats); stats are the float64 inner products kept for the backward."""
    return fused.contrast_forward(_cpp_sweep, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size,
                            temperature, eps)


@_contrast_logits_op.register_fake
def _(cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size, temperature, eps):
    dt = fused.kernel_dtype(cam_orig, cam_aug, neg_cam)
    logits = cam_aug.new_empty(fused.logits_shape(cam_aug, neg_cam), dtype=dt)
    return logits, cam_aug.new_empty((fused.stats_numel(cam_aug, neg_cam),), dtype=torch.float64)


def _contrast_setup(ctx, inputs, output):
    cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size, temperature, eps = inputs
    ctx.size, ctx.temperature, ctx.eps = size, temperature, eps
    ctx.problem = fused.take_problem(output[1])
    ctx.save_for_backward(cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, output[1])


def _contrast_backward(ctx, grad_logits, grad_stats):
    cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, packed = ctx.saved_tensors
    d_orig, d_aug, d_neg = fused.contrast_backward(
        _cpp_sweep_backward, grad_logits, packed, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask,
        self_index, ctx.size, ctx.temperature, ctx.eps, pb=ctx.problem,
    )
    return first_order_only("contrast_logits", (d_orig, d_aug, None, None, None, d_neg, None, None, None, None, None),
                            (grad_logits, cam_orig, cam_aug, neg_cam))


_contrast_logits_op.register_autograd(_contrast_backward, setup_context=_contrast_setup)

if _EXT_ERROR is None:

    @torch.library.register_fake("sgc_fast::contrast_sweep")
    def _contrast_sweep_fake(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask, eps):
        B = cam_aug.shape[0]
        NQ = neg_cam.shape[0] if neg_cam.shape[0] > 0 else B
        f = cam_aug.new_empty
        d = torch.float64
        return f((B, NQ), dtype=d), f((B,), dtype=d), f((B,), dtype=d), f((B,), dtype=d), f((NQ,), dtype=d)

    @torch.library.register_fake("sgc_fast::contrast_sweep_backward")
    def _contrast_sweep_backward_fake(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask, eps, *coefs):
        d = torch.float64
        return (cam_aug.new_empty(cam_aug.shape, dtype=d), cam_aug.new_empty(cam_aug.shape, dtype=d),
                cam_aug.new_empty(neg_cam.shape, dtype=d))


if _EXT_ERROR is None:  # the native glue (fused.NativeGlue); fakes so that the ops also trace

    @torch.library.register_fake("sgc_fast::contrast_normalise")
    def _contrast_normalise_fake(cam, weight, eps, dtype):
        return cam.new_empty(cam.shape, dtype=dtype), cam.new_empty((cam.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("sgc_fast::contrast_epilogue")
    def _contrast_epilogue_fake(gram, pos, norm_aug, norm_orig, norm_neg, self_index, separate, temperature, dtype):
        B, NQ = gram.shape
        logits = gram.new_empty((B, 1 + NQ if separate else B), dtype=dtype)
        return logits, gram.new_empty((B * NQ + 3 * B + NQ,))

    @torch.library.register_fake("sgc_fast::contrast_coefficients")
    def _contrast_coefficients_fake(stats, grad_logits, self_index, separate, temperature):
        B = grad_logits.shape[0]
        N = grad_logits.shape[1] - 1 if separate else 0
        f = stats.new_empty
        return f((B, B)), f((B, N)), f((N, B)), f((N,)), f((B,)), f((B,))

    @torch.library.register_fake("sgc_fast::contrast_unnormalise")
    def _contrast_unnormalise_fake(grad_ct, cam, total, weight):
        return torch.empty_like(cam)

    @torch.library.register_fake("sgc_fast::contrast_lowres_stats")
    def _contrast_lowres_stats_fake(ct_aug, ct_orig, ct_neg, uy, ux, vy, vx, my, mx, weight, eps):
        B, h, w = ct_aug.shape
        N = ct_neg.shape[0]
        NQ = N if N > 0 else B
        f = ct_aug.new_empty
        return (f((B, NQ)), f((B,)), f((B,)), f((B,)), f((NQ,)), f((B + N, h, w)), f((B, h, w)), f((B, h, w)),
                f((B, h, w)), f((B, h, h)), f((B, w, w)))

    @torch.library.register_fake("sgc_fast::contrast_lowres_grads")
    def _contrast_lowres_grads_fake(ct_aug, m, uv, vv, col, ay, ax, weight, eps, *coefs):
        B = ct_aug.shape[0]
        return torch.empty_like(ct_aug), torch.empty_like(ct_aug), m.new_empty((m.shape[0] - B, *ct_aug.shape[1:]))

    @torch.library.register_fake("sgc_fast::warp_matrices")
    def _warp_matrices_fake(crop, flip, H, W, h, w):
        B = crop.shape[0]
        return crop.new_empty((B, H, h), dtype=torch.float64), crop.new_empty((B, W, w), dtype=torch.float64)


#: Largest accepted ``eps``: the maps are sum-normalised (a pixel ~ 1 / (H W)), so eps is a tiny floor; beyond 1 it
#: would drown the maps, and at ~1e19 its square overflows float32.
EPS_MAX = 1.0


def check_size(size, name: str = "size") -> tuple[int, int]:
    """``(H, W)`` from a pair of positive integers; anything else (one number, a string such as ``"12"``, floats,
    booleans) is a ``ValueError`` naming ``name``."""
    if isinstance(size, str | bytes) or not hasattr(size, "__len__") or len(size) != 2:
        raise ValueError(f"{name}: expected (H, W), two positive integers, got {size!r}")
    out = []
    for v in size:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
                v = int(v)
            else:
                raise ValueError(f"{name}: expected (H, W), two positive integers, got {size!r}")
        if int(v) <= 0:
            raise ValueError(f"{name}: expected positive (H, W), got {tuple(size)!r}")
        out.append(int(v))
    return out[0], out[1]


def check_positive(value, name: str, upper: float = math.inf) -> float:
    """A real number (Python or NumPy scalar, 0-d tensor) with ``0 < value <= upper``, finite, as a float."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (0 < v <= upper and math.isfinite(v)):
        bound = f" at most {upper:g}" if upper != math.inf else ""
        raise ValueError(f"{name}: expected a positive finite number{bound}, got {value!r}")
    return v


def check_contrast_args(cam_orig, cam_aug, mask, crop, flip, size, temperature, eps, neg_cam, neg_mask, self_index):
    """Validate contrast_logits' arguments; raise a one-line error naming the argument."""
    for name, c in (("cam_orig", cam_orig), ("cam_aug", cam_aug)):
        if not isinstance(c, torch.Tensor) or c.dim() != 3:
            raise ValueError(f"{name}: expected a [B, h, w] tensor, got {_describe(c)}")
        if c.dtype not in _FLOATS:
            raise TypeError(f"{name}: expected a floating dtype, got {c.dtype}")
    if cam_orig.shape != cam_aug.shape:
        raise ValueError(f"cam_aug: shape {list(cam_aug.shape)} does not match cam_orig {list(cam_orig.shape)}")
    dev = cam_aug.device
    if cam_orig.device != dev:
        raise ValueError(f"cam_orig: on {cam_orig.device}, but cam_aug on {dev}")
    B, h, w = cam_aug.shape
    if B == 0 or h == 0 or w == 0:
        raise ValueError(f"cam_aug: empty map of shape {list(cam_aug.shape)}")
    H, W = check_size(size)
    check_positive(temperature, "temperature")
    check_positive(eps, "eps", EPS_MAX)
    _check_finite(cam_orig, cam_aug, dev)
    if mask is not None:
        _check_tensor("mask", mask, (B, H, W), dev, _MASK_DTYPES)
    if crop is None and flip is not None:
        raise ValueError("flip: given without crop (pass both, or neither)")
    if crop is not None:
        if flip is None:
            raise ValueError("crop: given without flip (pass flip=torch.zeros(B, dtype=torch.bool) for no flips)")
        _check_tensor("crop", crop, (B, 4), dev, _INT_DTYPES)
        _check_tensor("flip", flip, (B,), dev, (torch.bool,))
        if _check_values(dev):
            # In int64, each part bounded before the sums: no overflow whatever the crop's own dtype.
            top, left, ch, cw = crop.to(torch.int64).unbind(1)
            bad = (top < 0) | (left < 0) | (ch < 1) | (cw < 1) | (top > H) | (left > W) | (ch > H) | (cw > W)
            bad = bad | (top.clamp(0, H) + ch.clamp(0, H) > H) | (left.clamp(0, W) + cw.clamp(0, W) > W)
            if bool(bad.any()):
                b = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"crop: box {crop[b].tolist()} of sample {b} is empty or outside the {H}x{W} map "
                    "(expected top, left >= 0, height, width >= 1, top + height <= H, left + width <= W)"
                )
    if neg_cam is None:
        if neg_mask is not None:
            raise ValueError("neg_mask: given without neg_cam")
        if self_index is not None:
            raise ValueError("self_index: given without neg_cam")
        if B < 2:
            raise ValueError(f"cam_aug: batch of {B}; the in-batch negatives need B >= 2 (or pass neg_cam)")
        return
    if not isinstance(neg_cam, torch.Tensor) or neg_cam.dim() != 3 or tuple(neg_cam.shape[1:]) != (h, w):
        raise ValueError(f"neg_cam: expected a [N, {h}, {w}] tensor, got {_describe(neg_cam)}")
    if neg_cam.dtype not in _FLOATS:
        raise TypeError(f"neg_cam: expected a floating dtype, got {neg_cam.dtype}")
    if neg_cam.device != dev:
        raise ValueError(f"neg_cam: on {neg_cam.device}, but cam_aug on {dev}")
    N = neg_cam.shape[0]
    if N < 1:
        raise ValueError("neg_cam: expected at least one negative")
    if mask is not None and neg_mask is None:
        raise ValueError("neg_mask: required when mask is given (the negatives are masked maps too)")
    if mask is None and neg_mask is not None:
        raise ValueError("neg_mask: given without mask")
    if neg_mask is not None:
        _check_tensor("neg_mask", neg_mask, (N, H, W), dev, _MASK_DTYPES)
    if self_index is not None:
        _check_tensor("self_index", self_index, (B,), dev, _INT_DTYPES)
        if _check_values(dev) and bool(((self_index < -1) | (self_index >= N)).any()):
            raise ValueError(f"self_index: values must lie in [-1, {N}), got {self_index.tolist()}")
    _check_finite(None, neg_cam, dev, "neg_cam")


def _check_finite(cam_orig, cam_aug, device, aug_name: str = "cam_aug") -> None:
    """NaN or infinite CAM values are refused where values are checked (:func:`_check_values`): they would turn every
    logit of the batch into NaN."""
    if not _check_values(device):
        return
    for name, c in (("cam_orig", cam_orig), (aug_name, cam_aug)):
        if c is not None and not bool(torch.isfinite(c).all()):
            raise ValueError(f"{name}: holds NaN or infinite values")


_MASK_DTYPES = (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_values(device: torch.device) -> bool:
    """Whether to check the values of crop and self_index (a host synchronisation on a GPU): always for
    CPU tensors; for GPU tensors only with SGC_FAST_CHECK_VALUES=1."""
    return device.type == "cpu" or os.environ.get("SGC_FAST_CHECK_VALUES", "0") == "1"


def _check_tensor(name, t, shape, device, dtypes) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of shape {list(shape)}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: on {t.device}, but the CAMs on {device}")


def contrast_logits(
    cam_orig: torch.Tensor,
    cam_aug: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    crop: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    size: tuple[int, int] = (224, 224),
    temperature: float = 0.5,
    eps: float = 1e-8,
    neg_cam: torch.Tensor | None = None,
    neg_mask: torch.Tensor | None = None,
    self_index: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Saliency-contrast logits of two views' CAMs, already divided by ``temperature``.

    Args:
        cam_orig, cam_aug: ``[B, h, w]`` CAMs of the original and the second view.
        mask: ``[B, H, W]`` saliency mask of the second view (SGC), nonzero = salient.
        crop: ``[B, 4]`` integer ``(top, left, height, width)`` of the second view inside the ``H x W``
            original (CGC); ``flip``: ``[B]`` bool, the crop was mirrored. Mask and crop may be combined.
        size: ``(H, W)``, the map size (the image size for CGC).
        neg_cam: ``[N, h, w]`` separate negatives (e.g. gathered from all processes), ``neg_mask``
            ``[N, H, W]`` their masks (required with ``mask``), ``self_index`` ``[B]`` the column of
            row b's own map among them, or -1.

    Returns:
        ``[B, B]`` logits (column 0 the positive, then the other samples in ascending order), or
        ``[B, 1 + N]`` with separate negatives (``-inf`` at ``1 + self_index[b]``); float32, float64 for
        float64 CAMs.
    """
    check_contrast_args(cam_orig, cam_aug, mask, crop, flip, size, temperature, eps, neg_cam, neg_mask, self_index)
    size = check_size(size)
    temperature, eps = float(temperature), float(eps)
    backend = resolve_backend(backend, cam_aug.device)
    if backend == "reference":
        return reference.contrast_logits(
            cam_orig, cam_aug, mask=mask, crop=crop, flip=flip, size=size, temperature=temperature, eps=eps,
            neg_cam=neg_cam, neg_mask=neg_mask, self_index=self_index,
        )
    args = (cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, list(size), float(temperature),
            float(eps))
    if backend == "triton":
        from .triton import backend as triton_backend

        return triton_backend.contrast_logits(*args)
    return _contrast_logits_op(*args)[0]


def saliency_contrast_loss(
    feats_orig: torch.Tensor,
    grads_orig: torch.Tensor,
    feats_aug: torch.Tensor,
    grads_aug: torch.Tensor,
    *,
    kind: str = "hires",
    mask: torch.Tensor | None = None,
    crop: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
    size: tuple[int, int] = (224, 224),
    temperature: float = 0.5,
    eps: float = 1e-8,
    backend: str | None = None,
) -> torch.Tensor:
    """The contrastive term: InfoNCE over :func:`contrast_logits` of both views' CAMs (cross-entropy
    against column 0, mean over rows). Scalar, float32."""
    cam_orig = batched_cam(feats_orig, grads_orig, kind, backend=backend)
    cam_aug = batched_cam(feats_aug, grads_aug, kind, backend=backend)
    logits = contrast_logits(
        cam_orig, cam_aug, mask=mask, crop=crop, flip=flip, size=size, temperature=temperature, eps=eps,
        backend=backend,
    )
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
