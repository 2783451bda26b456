"""batched_cam in Triton: forward and backward.

Computes, for every sample b and position p of the h x w grid (same semantics as
csrc/cpu/batched_cam_kernel.cpp and sgc_fast.reference.batched_cam):

    kind "hires": cam[b,p] = relu( sum_k grads[b,k,p] * feats[b,k,p] )
    kind "grad" : cam[b,p] = relu( sum_k alpha[b,k] * feats[b,k,p] ),   alpha = mean_p grads[b,k,p]
    compact     : grads is [B,K] (a spatially constant gradient, e.g. head_grads); alpha = grads

Tiling: program (b, s) streams channels [s*k_chunk, (s+1)*k_chunk) of sample b in [BLOCK_K, HW_PAD] tiles
(a tile holds BLOCK_K whole maps, so the spatial mean of "grad" needs no second pass) and accumulates in
float32 (float64 if an input is float64). With one split the program applies the relu and writes cam;
with several, it writes a partial [B, splits, HW_PAD] that torch sums in split order (deterministic, no
atomics). Any strides: a map whose two spatial strides collapse (NCHW) is addressed as one flat run, so
loads are coalesced; channels-last tensors are contiguous along k and load as 16-byte vectors.
Backward (no recomputation needed: the op saves feats, grads and cam): one pass over the same tiles with
dz = grad_cam * (cam > 0) writes dfeats and dgrads in the inputs' dtypes; for the compact form it writes
dfeats and a [B,K] dgrads = sum_p feats * dz, never a full-size gradient. Not differentiable again.
Bytes: forward reads feats and grads once (2*B*K*h*w elements; compact: B*K*h*w + B*K) and writes B*h*w;
backward reads them once more and writes dfeats and dgrads once (FLOPs: 2 per element, bandwidth bound).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..once import first_order_only
from .launch import launcher, next_pow2, split_count, tuned

__all__ = ["cam_forward", "cam_backward", "BatchedCamFunction"]

#: grads layouts/kinds, a constexpr of the kernels.
HIRES, GRAD, COMPACT = 0, 1, 2
#: Channels a split streams at least (fewer splits for small K).
MIN_K_CHUNK = 64
#: Programs per SM the K-splits aim for: a streaming kernel needs many in flight (H200: 3 splits of B=256
#: reached 2.1-2.6 TB/s, 8-16 splits 3.1 TB/s).
PROGRAMS_PER_SM = 16
#: Largest h*w (padded to a power of two) a tile holds whole.
MAX_HW_PAD = 4096

_CONFIGS = [
    triton.Config({"BLOCK_K": 8}, num_warps=4),
    triton.Config({"BLOCK_K": 16}, num_warps=4),
    triton.Config({"BLOCK_K": 32}, num_warps=4),
    triton.Config({"BLOCK_K": 32}, num_warps=8),
]
_INTERPRET_CONFIG = triton.Config({"BLOCK_K": 8}, num_warps=4)
_KEY = ["K", "h", "w", "MODE", "A_FLAT", "G_FLAT"]


@triton.jit
def _spatial_offsets(p, w, s2, s3, FLAT: tl.constexpr):
    # Offsets of positions p of one map; a collapsible map is one run of stride s3.
    if FLAT:
        return p * s3
    return (p // w) * s2 + (p % w) * s3


@tuned(_CONFIGS, _INTERPRET_CONFIG, _KEY)
@triton.jit
def _cam_forward_kernel(
    out_ptr,  # FINAL: cam [B, h*w]; else partial [B, n_split, HW_PAD]; dtype = accumulation dtype
    feats_ptr, sa0, sa1, sa2, sa3,
    grads_ptr, sg0, sg1, sg2, sg3,
    K, h, w, k_chunk, n_split,
    MODE: tl.constexpr, A_FLAT: tl.constexpr, G_FLAT: tl.constexpr, FINAL: tl.constexpr,
    HW_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    acc_ty = out_ptr.dtype.element_ty
    hw = h * w
    p = tl.arange(0, HW_PAD)
    p_ok = p < hw
    a_sp = _spatial_offsets(p, w, sa2, sa3, A_FLAT)
    g_sp = _spatial_offsets(p, w, sg2, sg3, G_FLAT)
    k_lo = s * k_chunk
    k_hi = tl.minimum(K, k_lo + k_chunk)
    z = tl.zeros([BLOCK_K, HW_PAD], dtype=acc_ty)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_hi
        m = k_ok[:, None] & p_ok[None, :]
        kk = k.to(tl.int64)[:, None]
        a = tl.load(feats_ptr + b * sa0 + kk * sa1 + a_sp[None, :], mask=m, other=0.0).to(acc_ty)
        if MODE == 2:
            alpha = tl.load(grads_ptr + b * sg0 + k.to(tl.int64) * sg1, mask=k_ok, other=0.0).to(acc_ty)
            z += alpha[:, None] * a
        else:
            g = tl.load(grads_ptr + b * sg0 + kk * sg1 + g_sp[None, :], mask=m, other=0.0).to(acc_ty)
            if MODE == 0:
                z += g * a
            else:
                alpha = tl.sum(g, 1) / hw
                z += alpha[:, None] * a
    zs = tl.sum(z, 0)
    if FINAL:
        tl.store(out_ptr + b * hw + p, tl.where(zs < 0, 0.0, zs), mask=p_ok)  # relu; NaN stays NaN
    else:
        tl.store(out_ptr + (b * n_split + s) * HW_PAD + p, zs)


@tuned(_CONFIGS, _INTERPRET_CONFIG, _KEY)
@triton.jit
def _cam_backward_kernel(
    d_feats_ptr, sda0, sda1, sda2, sda3,
    d_grads_ptr, sdg0, sdg1, sdg2, sdg3,
    dz_ptr,  # [B, h*w] accumulation dtype: grad_cam where the relu was active, else 0
    feats_ptr, sa0, sa1, sa2, sa3,
    grads_ptr, sg0, sg1, sg2, sg3,
    K, h, w, k_chunk,
    MODE: tl.constexpr, A_FLAT: tl.constexpr, G_FLAT: tl.constexpr, DA_FLAT: tl.constexpr,
    DG_FLAT: tl.constexpr, HW_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    acc_ty = dz_ptr.dtype.element_ty
    hw = h * w
    p = tl.arange(0, HW_PAD)
    p_ok = p < hw
    a_sp = _spatial_offsets(p, w, sa2, sa3, A_FLAT)
    g_sp = _spatial_offsets(p, w, sg2, sg3, G_FLAT)
    da_sp = _spatial_offsets(p, w, sda2, sda3, DA_FLAT)
    dg_sp = _spatial_offsets(p, w, sdg2, sdg3, DG_FLAT)
    dz = tl.load(dz_ptr + b * hw + p, mask=p_ok, other=0.0)[None, :]
    k_lo = s * k_chunk
    k_hi = tl.minimum(K, k_lo + k_chunk)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_hi
        m = k_ok[:, None] & p_ok[None, :]
        kk = k.to(tl.int64)[:, None]
        a = tl.load(feats_ptr + b * sa0 + kk * sa1 + a_sp[None, :], mask=m, other=0.0).to(acc_ty)
        da_ptrs = d_feats_ptr + b * sda0 + kk * sda1 + da_sp[None, :]
        if MODE == 0:
            g = tl.load(grads_ptr + b * sg0 + kk * sg1 + g_sp[None, :], mask=m, other=0.0).to(acc_ty)
            tl.store(da_ptrs, g * dz, mask=m)
            tl.store(d_grads_ptr + b * sdg0 + kk * sdg1 + dg_sp[None, :], a * dz, mask=m)
        else:
            if MODE == 2:
                alpha = tl.load(grads_ptr + b * sg0 + k.to(tl.int64) * sg1, mask=k_ok, other=0.0).to(acc_ty)
            else:
                g = tl.load(grads_ptr + b * sg0 + kk * sg1 + g_sp[None, :], mask=m, other=0.0).to(acc_ty)
                alpha = tl.sum(g, 1) / hw
            tl.store(da_ptrs, alpha[:, None] * dz, mask=m)
            d_alpha = tl.sum(a * dz, 1)
            if MODE == 2:
                tl.store(d_grads_ptr + b * sdg0 + k.to(tl.int64) * sdg1, d_alpha, mask=k_ok)
            else:  # alpha is the spatial mean: every position gets d_alpha / (h*w)
                dg = tl.broadcast_to((d_alpha / hw)[:, None], [BLOCK_K, HW_PAD])
                tl.store(d_grads_ptr + b * sdg0 + kk * sdg1 + dg_sp[None, :], dg, mask=m)


def _acc_dtype(feats: torch.Tensor, grads: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (feats.dtype, grads.dtype) else torch.float32


def _mode(grads: torch.Tensor, kind: str) -> int:
    if grads.dim() == 2:
        return COMPACT
    if kind == "hires":
        return HIRES
    if kind == "grad":
        return GRAD
    raise ValueError(f"kind: expected 'hires' or 'grad', got {kind!r}")


def _strides4(t: torch.Tensor) -> list[int]:
    """Strides of a [B,K,h,w] tensor, or of the compact [B,K] form padded with zero spatial strides."""
    return list(t.stride()) + [0, 0] if t.dim() == 2 else list(t.stride())


def _flat(t: torch.Tensor) -> bool:
    """Whether the two spatial axes of a [B,K,h,w] tensor collapse into one run (stride2 == w * stride3)."""
    return t.dim() == 4 and (t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3))


def _check(feats: torch.Tensor, grads: torch.Tensor, kind: str) -> tuple[int, int, int, int, int]:
    torch._check(feats.dim() == 4, lambda: f"feats: expected [B, K, h, w], got shape {list(feats.shape)}")
    B, K, h, w = feats.shape
    torch._check(
        tuple(grads.shape) in ((B, K, h, w), (B, K)),
        lambda: f"grads: expected shape {[B, K, h, w]} or {[B, K]}, got {list(grads.shape)}",
    )
    hw_pad = next_pow2(h * w)
    if hw_pad > MAX_HW_PAD:
        raise ValueError(f"feats: maps of {h}x{w} are larger than the triton kernel's tile ({MAX_HW_PAD} positions)")
    return B, K, h, w, hw_pad


def _splits(feats: torch.Tensor) -> tuple[int, int]:
    B, K = feats.shape[:2]
    n_split = split_count(feats.device, B, triton.cdiv(K, MIN_K_CHUNK), PROGRAMS_PER_SM)
    k_chunk = triton.cdiv(K, n_split)
    return triton.cdiv(K, k_chunk), k_chunk


def cam_forward(feats: torch.Tensor, grads: torch.Tensor, kind: str) -> torch.Tensor:
    """``[B,K,h,w]`` x (``[B,K,h,w]`` or ``[B,K]``) -> cam ``[B,h,w]`` in the accumulation dtype."""
    B, K, h, w, hw_pad = _check(feats, grads, kind)
    mode = _mode(grads, kind)
    acc = _acc_dtype(feats, grads)
    n_split, k_chunk = _splits(feats)
    final = n_split == 1
    out = feats.new_empty((B, h, w) if final else (B, n_split, hw_pad), dtype=acc)
    launcher(_cam_forward_kernel)[(B, n_split)](
        out, feats, *feats.stride(), grads, *_strides4(grads), K, h, w, k_chunk, n_split,
        MODE=mode, A_FLAT=_flat(feats), G_FLAT=_flat(grads), FINAL=final, HW_PAD=hw_pad,
    )
    if final:
        return out
    return torch.relu(out[:, :, : h * w].sum(1)).view(B, h, w)


def cam_backward(grad_cam: torch.Tensor, cam: torch.Tensor, feats: torch.Tensor, grads: torch.Tensor, kind: str):
    """(dfeats, dgrads) of :func:`cam_forward`, in the dtypes (and, where dense, the strides) of the inputs."""
    B, K, h, w, hw_pad = _check(feats, grads, kind)
    mode = _mode(grads, kind)
    dz = torch.where(cam > 0, grad_cam, torch.zeros((), dtype=grad_cam.dtype, device=grad_cam.device))
    dz = dz.to(cam.dtype).contiguous()
    d_feats = torch.empty_like(feats)
    d_grads = torch.empty_like(grads)
    n_split, k_chunk = _splits(feats)
    launcher(_cam_backward_kernel)[(B, n_split)](
        d_feats, *d_feats.stride(), d_grads, *_strides4(d_grads), dz,
        feats, *feats.stride(), grads, *_strides4(grads), K, h, w, k_chunk,
        MODE=mode, A_FLAT=_flat(feats), G_FLAT=_flat(grads), DA_FLAT=_flat(d_feats), DG_FLAT=_flat(d_grads),
        HW_PAD=hw_pad,
    )
    return d_feats, d_grads


# ----------------------------------------------------------------------------------------------------------------
# Op registration: triton_op on CUDA (torch.compile sees the kernels), autograd.Function under the interpreter.
# ----------------------------------------------------------------------------------------------------------------


@torch.library.triton_op("sgc_fast::triton_batched_cam", mutates_args=())
def _batched_cam_op(feats: torch.Tensor, grads: torch.Tensor, kind: str) -> torch.Tensor:
    return cam_forward(feats, grads, kind)


@torch.library.triton_op("sgc_fast::triton_batched_cam_backward", mutates_args=())
def _batched_cam_backward_op(
    grad_cam: torch.Tensor, cam: torch.Tensor, feats: torch.Tensor, grads: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return cam_backward(grad_cam, cam, feats, grads, kind)


def _setup_context(ctx, inputs, output):
    feats, grads, kind = inputs
    ctx.kind = kind
    ctx.save_for_backward(feats, grads, output)


def _backward(ctx, grad_cam):
    feats, grads, cam = ctx.saved_tensors
    d_feats, d_grads = torch.ops.sgc_fast.triton_batched_cam_backward(grad_cam, cam, feats, grads, ctx.kind)
    return first_order_only("batched_cam", (d_feats, d_grads, None), (grad_cam, feats, grads))


_batched_cam_op.register_autograd(_backward, setup_context=_setup_context)


class BatchedCamFunction(torch.autograd.Function):
    """The interpreter path (CPU tensors under ``TRITON_INTERPRET=1``): same kernels, launched directly."""

    @staticmethod
    def forward(ctx, feats, grads, kind):
        cam = cam_forward(feats, grads, kind)
        ctx.kind = kind
        ctx.save_for_backward(feats, grads, cam)
        return cam

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_cam):
        feats, grads, cam = ctx.saved_tensors
        d_feats, d_grads = cam_backward(grad_cam, cam, feats, grads, ctx.kind)
        return d_feats, d_grads, None

