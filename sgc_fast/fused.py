"""What every fused backend of ``contrast_logits`` shares: the forward/backward orchestration around a
backend's masked sweep, and the choice of the float64 glue that runs around it.

The data path reads downwards only: :mod:`sgc_fast.ops` (routing) -> a backend (the extension's op in
``ops``, or :mod:`sgc_fast.triton.contrast_logits_op`) -> :func:`contrast_forward` / :func:`contrast_backward`
here -> the backend's sweep kernel, the glue (:class:`NativeGlue`, the Triton glue kernels of
:mod:`sgc_fast.triton.contrast_glue_kernel`, or :class:`sgc_fast.contrast.TorchGlue`) and the math of
:mod:`sgc_fast.contrast`. Nothing here imports ``ops``; backends import this module, never ``ops``.

Glue choice (:func:`glue_kind`): ``SGC_FAST_GLUE`` = ``native``, ``triton`` or ``torch`` overrides the automatic
choice (native where the extension has kernels for the device, else Triton on CUDA or under
``TRITON_INTERPRET=1``, else PyTorch).
"""

from __future__ import annotations

import functools
import os
import weakref

import torch

from . import contrast

__all__ = [
    "GLUES", "glue_kind", "explain_glue", "glue", "NativeGlue", "as_mask_bytes", "kernel_dtype", "contrast_forward",
    "take_problem", "contrast_backward", "sweep_args", "logits_shape", "stats_numel",
]

GLUES = ("native", "triton", "torch")


def glue_kind(device: torch.device) -> str:
    """Which glue runs for tensors on ``device``: ``SGC_FAST_GLUE`` when set (falling back to ``torch`` where the
    requested one cannot run), else ``native`` where the extension has kernels for the device, else ``triton``
    on CUDA (or under ``TRITON_INTERPRET=1``), else ``torch``."""
    want = os.environ.get("SGC_FAST_GLUE", "") or "auto"
    if want not in GLUES + ("auto",):
        raise ValueError(f"SGC_FAST_GLUE: expected one of {GLUES} or unset, got {want!r}")
    if want in ("auto", "native") and _native_glue_built(device.type):
        return "native"
    if want in ("auto", "triton") and _triton_glue_runs(device):
        return "triton"
    return "torch"


def explain_glue(device: torch.device | str = "cpu") -> dict[str, str]:
    """``{glue: "ok" | why not}`` for tensors on ``device``, plus ``"chosen"``: what :func:`glue_kind` picks."""
    device = torch.device(device)
    if _native_glue_built(device.type):
        native = "ok"
    elif device.type not in ("cpu", "cuda"):
        native = f"no native kernels for {device.type} tensors"
    else:
        native = f"extension sgc_fast._C not built with {device.type.upper()} kernels"
    try:
        from . import triton as sgc_triton

        triton_why = sgc_triton.unavailable_reason(device) or "ok"
    except ImportError as exc:
        triton_why = f"Triton kernels unavailable ({exc})"
    return {"native": native, "triton": triton_why, "torch": "ok", "chosen": glue_kind(device)}


def glue(device: torch.device):
    """The glue implementation for ``device`` (see :func:`glue_kind`): an object with the methods of
    :class:`sgc_fast.contrast.TorchGlue` (``normalise``, ``epilogue``, ``coefficients``, ``unnormalise``, ``warp_matrices``,
    ``lowres_stats``, ``lowres_grads``)."""
    kind = glue_kind(device)
    if kind == "native":
        return NativeGlue
    if kind == "triton":
        from .triton import contrast_glue_kernel

        return contrast_glue_kernel
    return contrast.TorchGlue


@functools.cache
def _native_glue_built(device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        from . import _C  # noqa: F401
    except ImportError:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("sgc_fast::contrast_normalise", key)


def _triton_glue_runs(device: torch.device) -> bool:
    try:
        from . import triton as sgc_triton
    except ImportError:
        return False
    return sgc_triton.unavailable_reason(device) is None


class NativeGlue:
    """The glue as the extension's ops (csrc/contrast_glue.h), same signatures as :class:`sgc_fast.contrast.TorchGlue`."""

    @staticmethod
    def normalise(cam, weight, eps, dtype):
        return torch.ops.sgc_fast.contrast_normalise(cam, weight, eps, dtype)

    @staticmethod
    def epilogue(stats, self_index, separate, temperature, dtype):
        return torch.ops.sgc_fast.contrast_epilogue(*stats, self_index, separate, temperature, dtype)

    @staticmethod
    def coefficients(packed, grad_logits, self_index, separate, temperature):
        if grad_logits.dtype not in (torch.float32, torch.float64):
            grad_logits = grad_logits.float()
        return torch.ops.sgc_fast.contrast_coefficients(packed, grad_logits, self_index, separate, temperature)

    @staticmethod
    def unnormalise(grad_ct, cam, total, weight):
        return torch.ops.sgc_fast.contrast_unnormalise(grad_ct, cam, total, weight)

    @staticmethod
    def warp_matrices(crop, flip, size, cam_size):
        return torch.ops.sgc_fast.warp_matrices(crop, flip, int(size[0]), int(size[1]), int(cam_size[0]),
                                                int(cam_size[1]))

    @staticmethod
    def lowres_stats(pb):
        """:func:`sgc_fast.contrast.lowres_stats` as one op; the products the backward needs go into the problem's memo."""
        out = torch.ops.sgc_fast.contrast_lowres_stats(pb.ct_aug, pb.ct_orig, pb.ct_neg, pb.uy, pb.ux, pb.vy, pb.vx,
                                                       pb.my, pb.mx, pb.weight, pb.eps)
        pb.memo["native_lowres"] = out[5:]
        return out[:5]

    @staticmethod
    def lowres_grads(pb, coefs):
        """:func:`sgc_fast.contrast.lowres_grads` as one op (products from the forward, or computed again)."""
        if "native_lowres" not in pb.memo:
            NativeGlue.lowres_stats(pb)
        return torch.ops.sgc_fast.contrast_lowres_grads(pb.ct_aug, *pb.memo["native_lowres"], pb.weight, pb.eps,
                                                        *coefs)


def as_mask_bytes(mask: torch.Tensor | None) -> torch.Tensor | None:
    """uint8 view (bool, uint8: no copy) or nonzero-test copy (other dtypes) of a mask."""
    if mask is None:
        return None
    if mask.dtype == torch.uint8:
        return mask
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8)
    return (mask != 0).to(torch.uint8)


def kernel_dtype(*cams: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(c is not None and c.dtype == torch.float64 for c in cams) else torch.float32


# Problem of each forward, keyed by id() of its stats tensor; an entry goes when that tensor dies or the
# autograd setup takes it (tensors cannot be dictionary keys: == is elementwise).
_PROBLEMS: dict = {}


def _keep_problem(packed: torch.Tensor, pb) -> None:
    key = id(packed)
    _PROBLEMS[key] = (weakref.ref(packed, lambda _ref: _PROBLEMS.pop(key, None)), pb)


def contrast_forward(sweep, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask, self_index, size, temperature, eps):
    """Shared forward of the fused backends: ``sweep(problem, mask_u8, neg_mask_u8, dtype) -> stats``
    runs the masked case; the unmasked case uses the low-resolution closed form. The float64 glue around it
    runs as :func:`glue` picks for the device (native ops, Triton kernels or PyTorch)."""
    dtype = kernel_dtype(cam_orig, cam_aug, neg_cam)
    impl = glue(cam_aug.device)
    # The sweep reads the normalised CAMs in its own dtype; the closed forms need them in float64.
    ct_dtype = torch.float64 if mask is None else dtype
    pb = contrast.prepare(cam_orig, cam_aug, neg_cam, crop, flip, size, eps, ct_dtype, impl)
    if mask is None:
        stats = impl.lowres_stats(pb)
    else:
        stats = sweep(pb, as_mask_bytes(mask), as_mask_bytes(neg_mask), dtype)
    logits, packed = impl.epilogue(stats, self_index, pb.separate, temperature, dtype)
    _keep_problem(packed, pb)  # the backward reuses the interpolation matrices instead of rebuilding them
    return logits, packed


def take_problem(packed: torch.Tensor):
    """The forward's Problem for its stats output (call from setup_context, where the tensor is the one
    the forward returned), or None."""
    entry = _PROBLEMS.get(id(packed))
    if entry is None or entry[0]() is not packed:
        return None
    del _PROBLEMS[id(packed)]
    return entry[1]


def contrast_backward(sweep_backward, grad_logits, packed, cam_orig, cam_aug, mask, crop, flip, neg_cam, neg_mask,
                      self_index, size, temperature, eps, pb=None):
    """Shared backward of the fused backends: gradients w.r.t. (cam_orig, cam_aug, neg_cam)."""
    dtype = kernel_dtype(cam_orig, cam_aug, neg_cam)
    impl = glue(cam_aug.device)
    if pb is None:
        pb = contrast.prepare(cam_orig, cam_aug, neg_cam, crop, flip, size, eps,
                              torch.float64 if mask is None else dtype, impl)
    c_aa, c_aq, c_qa, c_qq, c_ap, c_pp = impl.coefficients(packed, grad_logits, self_index, pb.separate, temperature)
    coefs = (c_aa, c_aq, c_qa, c_qq, c_ap, c_ap, c_pp)
    if mask is None:
        g_aug, g_orig, g_neg = impl.lowres_grads(pb, coefs)
    else:
        g_aug, g_orig, g_neg = sweep_backward(pb, as_mask_bytes(mask), as_mask_bytes(neg_mask), coefs, dtype)
    d_orig = impl.unnormalise(g_orig, cam_orig, pb.sum_orig, pb.weight)
    d_aug = impl.unnormalise(g_aug, cam_aug, pb.sum_aug, pb.weight)
    d_neg = None if neg_cam is None else impl.unnormalise(g_neg, neg_cam, pb.sum_neg, pb.weight)
    return d_orig, d_aug, d_neg


def sweep_args(pb, mask_u8, neg_mask_u8, dtype):
    H, W = pb.H, pb.W
    if neg_mask_u8 is None:
        neg_mask_u8 = torch.zeros((0, H, W), dtype=torch.uint8, device=mask_u8.device)
    uy, ux, vy, vx = pb.matrices(dtype)
    return (pb.ct_aug.to(dtype), pb.ct_orig.to(dtype), mask_u8, uy, ux, vy, vx, pb.ct_neg.to(dtype), neg_mask_u8,
            float(pb.eps))


def logits_shape(cam_aug, neg_cam):
    B = cam_aug.shape[0]
    return (B, B) if neg_cam is None else (B, 1 + neg_cam.shape[0])


def stats_numel(cam_aug, neg_cam):
    B = cam_aug.shape[0]
    NQ = B if neg_cam is None else neg_cam.shape[0]
    return B * NQ + 3 * B + NQ
