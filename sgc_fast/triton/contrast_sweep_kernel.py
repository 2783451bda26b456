"""contrast_sweep in Triton: the per-pixel (SGC, masked) part of contrast_logits, forward and backward.

Same contract as csrc/cpu/contrast_sweep_kernel.cpp (op schema ``sgc_fast::contrast_sweep``). Inputs are the
sum-normalised CAMs ``ct`` ([B,h,w], [N,h,w]) and the dense interpolation matrices ``uy [H,h]``, ``ux [W,w]``,
``vy [1 or B,H,h]``, ``vx [1 or B,W,w]``; the full-resolution vectors are, pixel by pixel,

    a_i = mask_i     . (Uy ct_aug_i Ux^T + eps)        (augmented view, masked)
    p_i =               Vy_i ct_orig_i Vx_i^T + eps    (original view, optionally warped)
    q_k = neg_mask_k . (Uy ct_neg_k Ux^T + eps)        (separate negatives; none: q = a)

Forward returns, in float64, gram [B,Nq] (a.q; a.a without separate negatives, whose diagonal is |a|^2),
pos [B] = a.p and the squared norms |a|^2 [B], |p|^2 [B], |q|^2 [Nq]. Backward takes the coefficients of
sgc_fast/contrast.py and returns the gradients w.r.t. ct_aug, ct_orig, ct_neg (float64) of the fields
    dA = C_aa A + C_aq Q + diag(c_ap) P,   dP = diag(c_pa) A + diag(c_pp) P,   dQ = C_qa A + diag(c_qq) Q.
No H x W map is ever stored.

Tiling. A tile is one output row Y times BLOCK_X columns of BLOCK_B maps. It is regenerated from the CAMs:
the row interpolation ``rows[i, x] = sum_y Uy[Y, y] ct_i[y, x]`` once per row (zero weights skipped), then
``tile = rows @ Ux[X, :]^T`` as a ``tl.dot`` with K = w padded to 16, plus eps, times the mask. The original
view uses the same path when it is not warped; a per-sample warp V_i (CGC crop) is applied with
[BLOCK_B, BLOCK_X, w] broadcasts instead (only in the O(B H W) kernels).
- ``_gram_kernel``: program (row block, column block, row chunk) accumulates the Gram block
  ``tl.dot(A_rows, A_cols^T)`` over its chunk's tiles (IEEE fp32 by default); without separate negatives only
  blocks on or above the diagonal are computed (the others store zeros). Per-chunk partials [chunks, B, Nq]
  and those of the norms are summed in float64, in chunk order, by ``_stats_finish_kernel`` (one launch that
  also mirrors the upper triangle; deterministic, no atomics).
- ``_norms_kernel``: program (sample block, row chunk): |a|^2, a.p, |p|^2 (or |q|^2) per sample.
- ``_field_grad_kernel`` (backward, O(B Nq H W)): program (row block, row chunk) forms the field tile of its
  samples, ``sum_j C[i, j] S_j`` (tl.dot of a coefficient block with regenerated tiles of every column block)
  plus an optional diagonal self term, masks it, and applies the adjoint of the x-interpolation as
  ``tl.dot(field, Ux[X, :])``; it writes that row's [B, w] partial (the adjoint as a gather: nothing is
  scattered, no atomics). The y-adjoint ``g[i,y,x] = sum_Y Uy[Y,y] r[Y,i,x]`` is ``_y_adjoint_kernel``
  (float64, one launch per gradient, adding the two row partials of dA on the way).
- ``_pos_grad_kernel`` (backward, O(B H W)): the c_ap P term of dA and the field dP through V_i, the same way.
Backward recomputes every tile from the CAMs (nothing of size H x W is saved between the passes).
float64 maps run the same kernels with the products as broadcast sums in small tiles (_FLOAT64_CONFIG).
Work (B = Nq = 256, 7x7 -> 224x224): forward ~B^2 H W / 2 multiply-adds for the Gram (6.6 GFLOP for the full
matrix) plus ~B^2 H W * 16 / BLOCK_B for the regeneration; backward ~B^2 H W for the fields plus the same
regeneration overhead. Memory traffic: the masks (B*H*W bytes, re-read per column block from L2), the CAMs,
partials of [chunks, B, Nq] floats; B*H*w floats of row partials in backward.
Measured (H200, Triton 3.6, B=256, fp32 IEEE): Gram 0.6 ms (~11 TFLOP/s; tf32x3 0.2-0.28 ms, tf32 0.1 ms),
field kernel 0.58 ms, norms 0.1 ms, pos 0.13 ms.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ..interp import cacheable
from .launch import DOT_MIN, launcher, next_pow2, split_count, tuned

__all__ = ["contrast_sweep", "contrast_sweep_backward"]

#: tl.dot precision of float32 tiles, a constexpr of every kernel: IEEE by default (DESIGN §4). The environment
#: variable SGC_FAST_TRITON_DOT = "tf32x3" (tensor cores, three TF32 products: about float32 accuracy) or "tf32"
#: (one TF32 product, truncated inputs: ~1e-4 relative) opts in, read at each launch (:func:`dot_precision`).
DOT_PRECISION = "ieee"
DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")


def dot_precision() -> str:
    """The ``input_precision`` of the float32 ``tl.dot`` s: ``SGC_FAST_TRITON_DOT`` when set, else IEEE."""
    value = os.environ.get("SGC_FAST_TRITON_DOT", "") or DOT_PRECISION
    if value not in DOT_PRECISIONS:
        raise ValueError(f"SGC_FAST_TRITON_DOT: expected one of {DOT_PRECISIONS} or unset, got {value!r}")
    return value
#: Reuse the row tile as the column tile in diagonal Gram blocks. Off: the runtime branch it needs made the
#: kernel 5-10x slower on an H200 (Triton 3.6) than regenerating both tiles.
REUSE_DIAGONAL_TILE = False

# Tile configs: BLOCK_B maps x BLOCK_X pixels of one row. GPU lists are autotuned; the interpreter gets one.
_GRAM_CONFIGS = [
    triton.Config({"BLOCK_B": 64, "BLOCK_X": 64}, num_warps=4),
    triton.Config({"BLOCK_B": 64, "BLOCK_X": 32}, num_warps=4),
    triton.Config({"BLOCK_B": 64, "BLOCK_X": 64}, num_warps=8),
    triton.Config({"BLOCK_B": 128, "BLOCK_X": 64}, num_warps=8),
]
_FIELD_CONFIGS = [
    triton.Config({"BLOCK_B": 64, "BLOCK_X": 64}, num_warps=4),
    triton.Config({"BLOCK_B": 64, "BLOCK_X": 64}, num_warps=8),
    triton.Config({"BLOCK_B": 128, "BLOCK_X": 32}, num_warps=8),
]
_PER_SAMPLE_CONFIGS = [
    triton.Config({"BLOCK_B": 16, "BLOCK_X": 64}, num_warps=4),
    triton.Config({"BLOCK_B": 16, "BLOCK_X": 32}, num_warps=4),
    triton.Config({"BLOCK_B": 32, "BLOCK_X": 32}, num_warps=4),
]
_INTERPRET_CONFIG = triton.Config({"BLOCK_B": 16, "BLOCK_X": 16}, num_warps=4)
#: The only config for float64 maps (products as broadcast sums: [BLOCK_B, K, BLOCK_X] live in registers).
_FLOAT64_CONFIG = triton.Config({"BLOCK_B": 16, "BLOCK_X": 16}, num_warps=4)
#: BLOCK_B of the GPU configs used to size the launch (programs per row chunk); autotuning may pick another.
_SIZING_BLOCK_B = 64
_KEY = ["n_r", "H", "W", "h", "w"]


# ----------------------------------------------------------------------------------------------------------------
# Tile regeneration
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    """a @ b: tl.dot (IEEE for float32 by default); float64 tiles (small: _FLOAT64_CONFIG) as a broadcast sum,
    since Triton 3.6 cannot lower a float64 tl.dot on sm_90."""
    if a.dtype == tl.float64:
        return tl.sum(a[:, :, None] * b[None, :, :], 1)
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _expand_shared(rows, ux_ptr, X, x_ok, w, W_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """rows @ Ux[X, :]^T: [BLOCK_B, BLOCK_X]."""
    xs = tl.arange(0, W_DOT)
    ux_t = tl.load(ux_ptr + X[None, :] * w + xs[:, None], mask=(xs[:, None] < w) & x_ok[None, :], other=0.0)
    return _mm(rows, ux_t, PRECISION)


@triton.jit
def _rows_shared(ct_ptr, i_idx, i_ok, uy_ptr, Y, h, w, BLOCK_B: tl.constexpr, W_DOT: tl.constexpr):
    """rows[i, x] = sum_y Uy[Y, y] ct[i, y, x]  ([BLOCK_B, W_DOT], zero beyond w and for i >= n)."""
    xs = tl.arange(0, W_DOT)
    ptrs = ct_ptr + i_idx[:, None] * (h * w) + xs[None, :]
    ok = i_ok[:, None] & (xs[None, :] < w)
    rows = tl.zeros([BLOCK_B, W_DOT], dtype=ct_ptr.dtype.element_ty)
    for y in range(0, h):
        wy = tl.load(uy_ptr + Y * h + y)
        if wy != 0:
            rows += wy * tl.load(ptrs + y * w, mask=ok, other=0.0)
    return rows


@triton.jit
def _tile_shared(rows, ux_ptr, X, x_ok, w, eps, mask_ptr, i_idx, i_ok, Y, sm0, sm1, sm2, W_DOT: tl.constexpr,
                 PRECISION: tl.constexpr):
    """mask_i . (rows @ Ux[X, :]^T + eps) for pixels (Y, X): [BLOCK_B, BLOCK_X]; zero outside the map."""
    v = _expand_shared(rows, ux_ptr, X, x_ok, w, W_DOT, PRECISION) + eps
    keep = i_ok[:, None] & x_ok[None, :]
    m = tl.load(mask_ptr + i_idx.to(tl.int64)[:, None] * sm0 + Y * sm1 + X[None, :] * sm2, mask=keep, other=0)
    return tl.where(keep & (m != 0), v, 0.0)


@triton.jit
def _rows_warped(ct_ptr, i_idx, i_ok, vy_ptr, svy, Y, H, h, w, BLOCK_B: tl.constexpr, W_P2: tl.constexpr):
    """rows[i, x] = sum_y Vy_i[Y, y] ct[i, y, x] ([BLOCK_B, W_P2]); ``svy`` = 0 when V is shared."""
    xs = tl.arange(0, W_P2)
    ptrs = ct_ptr + i_idx[:, None] * (h * w) + xs[None, :]
    ok = i_ok[:, None] & (xs[None, :] < w)
    rows = tl.zeros([BLOCK_B, W_P2], dtype=ct_ptr.dtype.element_ty)
    for y in range(0, h):
        wy = tl.load(vy_ptr + i_idx * svy + Y * h + y, mask=i_ok, other=0.0)
        rows += wy[:, None] * tl.load(ptrs + y * w, mask=ok, other=0.0)
    return rows


@triton.jit
def _rows_of_p(ct_ptr, i_idx, i_ok, uy_ptr, vy_ptr, svy, Y, H, h, w, BLOCK_B: tl.constexpr, W_P: tl.constexpr,
               WARPED: tl.constexpr):
    """Row interpolation of the original view: per-sample Vy_i (WARPED) or the shared Uy."""
    if WARPED:
        return _rows_warped(ct_ptr, i_idx, i_ok, vy_ptr, svy, Y, H, h, w, BLOCK_B, W_P)
    else:
        return _rows_shared(ct_ptr, i_idx, i_ok, uy_ptr, Y, h, w, BLOCK_B, W_P)


@triton.jit
def _vx_tile(vx_ptr, svx, i_idx, i_ok, X, x_ok, w, W_P2: tl.constexpr):
    """Vx_i[X, x] as [BLOCK_B, BLOCK_X, W_P2] (zero outside)."""
    xs = tl.arange(0, W_P2)
    ptrs = vx_ptr + i_idx.to(tl.int64)[:, None, None] * svx + X[None, :, None] * w + xs[None, None, :]
    ok = i_ok[:, None, None] & x_ok[None, :, None] & (xs[None, None, :] < w)
    return tl.load(ptrs, mask=ok, other=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


@tuned(_GRAM_CONFIGS, _INTERPRET_CONFIG, float64_config=_FLOAT64_CONFIG, key=_KEY + ["n_c", "SYMMETRIC"])
@triton.jit
def _gram_kernel(
    part_ptr,  # [chunks, n_r, n_c]
    ct_r_ptr, mask_r_ptr, smr0, smr1, smr2, n_r,
    ct_c_ptr, mask_c_ptr, smc0, smc1, smc2, n_c,
    uy_ptr, ux_ptr, H, W, h, w, eps_ptr, rows_per_chunk,
    SYMMETRIC: tl.constexpr, REUSE_DIAG: tl.constexpr, W_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_X: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    eps = tl.load(eps_ptr)  # a tensor, so that float64 kernels get a float64 eps
    n_bc = tl.cdiv(n_c, BLOCK_B)
    bi = pid // n_bc
    bj = pid % n_bc
    i_idx = bi * BLOCK_B + tl.arange(0, BLOCK_B)
    j_idx = bj * BLOCK_B + tl.arange(0, BLOCK_B)
    i_ok = i_idx < n_r
    j_ok = j_idx < n_c
    y_lo = chunk * rows_per_chunk
    y_hi = tl.minimum(H, y_lo + rows_per_chunk)
    diag = bi == bj
    if SYMMETRIC:
        if bi > bj:
            y_hi = y_lo  # below the diagonal: mirrored from above, store zeros
    acc = tl.zeros([BLOCK_B, BLOCK_B], dtype=ct_r_ptr.dtype.element_ty)
    for Y in range(y_lo, y_hi):
        rows_r = _rows_shared(ct_r_ptr, i_idx, i_ok, uy_ptr, Y, h, w, BLOCK_B, W_DOT)
        rows_c = _rows_shared(ct_c_ptr, j_idx, j_ok, uy_ptr, Y, h, w, BLOCK_B, W_DOT)
        for x0 in range(0, W, BLOCK_X):
            X = x0 + tl.arange(0, BLOCK_X)
            x_ok = X < W
            t_r = _tile_shared(rows_r, ux_ptr, X, x_ok, w, eps, mask_r_ptr, i_idx, i_ok, Y, smr0, smr1, smr2, W_DOT, PRECISION)
            if SYMMETRIC and REUSE_DIAG:
                if diag:  # a diagonal block: the column tile is the row tile
                    t_c = t_r
                else:
                    t_c = _tile_shared(rows_c, ux_ptr, X, x_ok, w, eps, mask_c_ptr, j_idx, j_ok, Y, smc0, smc1,
                                       smc2, W_DOT, PRECISION)
            else:
                t_c = _tile_shared(rows_c, ux_ptr, X, x_ok, w, eps, mask_c_ptr, j_idx, j_ok, Y, smc0, smc1, smc2,
                                   W_DOT, PRECISION)
            acc += _mm(t_r, tl.trans(t_c), PRECISION)
    out = part_ptr + (chunk * n_r + i_idx[:, None]).to(tl.int64) * n_c + j_idx[None, :]
    tl.store(out, acc, mask=i_ok[:, None] & j_ok[None, :])


@tuned(_PER_SAMPLE_CONFIGS, _INTERPRET_CONFIG, float64_config=_FLOAT64_CONFIG, key=_KEY + ["HAS_P"])
@triton.jit
def _norms_kernel(
    part_ptr,  # [chunks, 3, n_r]: |a|^2, a.p, |p|^2
    ct_ptr, mask_ptr, sm0, sm1, sm2, n_r,
    ct_p_ptr, vy_ptr, svy, vx_ptr, svx,
    uy_ptr, ux_ptr, H, W, h, w, eps_ptr, rows_per_chunk,
    HAS_P: tl.constexpr, WARPED: tl.constexpr, W_DOT: tl.constexpr, W_P2: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_X: tl.constexpr,
):
    bi = tl.program_id(0)
    chunk = tl.program_id(1)
    eps = tl.load(eps_ptr)  # a tensor, so that float64 kernels get a float64 eps
    dt = ct_ptr.dtype.element_ty
    i_idx = bi * BLOCK_B + tl.arange(0, BLOCK_B)
    i_ok = i_idx < n_r
    y_lo = chunk * rows_per_chunk
    y_hi = tl.minimum(H, y_lo + rows_per_chunk)
    aa = tl.zeros([BLOCK_B], dtype=dt)
    ap = tl.zeros([BLOCK_B], dtype=dt)
    pp = tl.zeros([BLOCK_B], dtype=dt)
    for Y in range(y_lo, y_hi):
        rows_a = _rows_shared(ct_ptr, i_idx, i_ok, uy_ptr, Y, h, w, BLOCK_B, W_DOT)
        if HAS_P:
            rows_p = _rows_of_p(ct_p_ptr, i_idx, i_ok, uy_ptr, vy_ptr, svy, Y, H, h, w, BLOCK_B, W_P2, WARPED)
        for x0 in range(0, W, BLOCK_X):
            X = x0 + tl.arange(0, BLOCK_X)
            x_ok = X < W
            a = _tile_shared(rows_a, ux_ptr, X, x_ok, w, eps, mask_ptr, i_idx, i_ok, Y, sm0, sm1, sm2, W_DOT, PRECISION)
            aa += tl.sum(a * a, 1)
            if HAS_P:
                if WARPED:
                    vx_t = _vx_tile(vx_ptr, svx, i_idx, i_ok, X, x_ok, w, W_P2)
                    p = tl.sum(rows_p[:, None, :] * vx_t, 2)
                else:
                    p = _expand_shared(rows_p, ux_ptr, X, x_ok, w, W_P2, PRECISION)
                p = tl.where(i_ok[:, None] & x_ok[None, :], p + eps, 0.0)
                ap += tl.sum(a * p, 1)
                pp += tl.sum(p * p, 1)
    out = part_ptr + (chunk * 3) * n_r + i_idx
    tl.store(out, aa, mask=i_ok)
    tl.store(out + n_r, ap, mask=i_ok)
    tl.store(out + 2 * n_r, pp, mask=i_ok)


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------


@tuned(_FIELD_CONFIGS, _INTERPRET_CONFIG, float64_config=_FLOAT64_CONFIG, key=_KEY + ["n_c", "HAS_SELF"])
@triton.jit
def _field_grad_kernel(
    rpart_ptr,  # [H, n_r, w]: x-adjoint of the masked field, per output row
    ct_r_ptr, mask_r_ptr, smr0, smr1, smr2, n_r,
    ct_c_ptr, mask_c_ptr, smc0, smc1, smc2, n_c,
    coef_ptr,  # [n_r, n_c] contiguous
    self_ptr,  # [n_r]: coefficient of the row's own map (HAS_SELF)
    uy_ptr, ux_ptr, H, W, h, w, eps_ptr, rows_per_chunk,
    HAS_SELF: tl.constexpr, W_DOT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    bi = tl.program_id(0)
    chunk = tl.program_id(1)
    eps = tl.load(eps_ptr)  # a tensor, so that float64 kernels get a float64 eps
    dt = ct_r_ptr.dtype.element_ty
    i_idx = bi * BLOCK_B + tl.arange(0, BLOCK_B)
    i_ok = i_idx < n_r
    xs = tl.arange(0, W_DOT)
    if HAS_SELF:
        d_self = tl.load(self_ptr + i_idx, mask=i_ok, other=0.0)
    y_lo = chunk * rows_per_chunk
    y_hi = tl.minimum(H, y_lo + rows_per_chunk)
    for Y in range(y_lo, y_hi):
        if HAS_SELF:
            rows_self = _rows_shared(ct_r_ptr, i_idx, i_ok, uy_ptr, Y, h, w, BLOCK_B, W_DOT)
        r = tl.zeros([BLOCK_B, W_DOT], dtype=dt)
        for x0 in range(0, W, BLOCK_X):
            X = x0 + tl.arange(0, BLOCK_X)
            x_ok = X < W
            field = tl.zeros([BLOCK_B, BLOCK_X], dtype=dt)
            for j0 in range(0, n_c, BLOCK_B):
                j_idx = j0 + tl.arange(0, BLOCK_B)
                j_ok = j_idx < n_c
                rows_c = _rows_shared(ct_c_ptr, j_idx, j_ok, uy_ptr, Y, h, w, BLOCK_B, W_DOT)
                t_c = _tile_shared(rows_c, ux_ptr, X, x_ok, w, eps, mask_c_ptr, j_idx, j_ok, Y, smc0, smc1, smc2,
                                   W_DOT, PRECISION)
                c = tl.load(coef_ptr + i_idx.to(tl.int64)[:, None] * n_c + j_idx[None, :], mask=i_ok[:, None] & j_ok[None, :],
                            other=0.0)
                field += _mm(c, t_c, PRECISION)
            if HAS_SELF:
                t_self = _tile_shared(rows_self, ux_ptr, X, x_ok, w, eps, mask_r_ptr, i_idx, i_ok, Y, smr0, smr1,
                                      smr2, W_DOT, PRECISION)
                field += d_self[:, None] * t_self
            keep = i_ok[:, None] & x_ok[None, :]
            m = tl.load(mask_r_ptr + i_idx.to(tl.int64)[:, None] * smr0 + Y * smr1 + X[None, :] * smr2, mask=keep, other=0)
            field = tl.where(keep & (m != 0), field, 0.0)
            ux_b = tl.load(ux_ptr + X[:, None] * w + xs[None, :], mask=x_ok[:, None] & (xs[None, :] < w), other=0.0)
            r += _mm(field, ux_b, PRECISION)
        out = rpart_ptr + (Y * n_r + i_idx[:, None]).to(tl.int64) * w + xs[None, :]
        tl.store(out, r, mask=i_ok[:, None] & (xs[None, :] < w))


@tuned(_PER_SAMPLE_CONFIGS, _INTERPRET_CONFIG, float64_config=_FLOAT64_CONFIG, key=_KEY)
@triton.jit
def _pos_grad_kernel(
    ra_ptr,  # [H, n_r, w]: x-adjoint of mask . c_ap P (through Ux)
    rp_ptr,  # [H, n_r, w]: x-adjoint of c_pa A + c_pp P (through Vx_i)
    ct_ptr, mask_ptr, sm0, sm1, sm2, n_r,
    ct_p_ptr, vy_ptr, svy, vx_ptr, svx,
    c_ap_ptr, c_pa_ptr, c_pp_ptr,
    uy_ptr, ux_ptr, H, W, h, w, eps_ptr, rows_per_chunk,
    WARPED: tl.constexpr, W_DOT: tl.constexpr, W_P2: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    bi = tl.program_id(0)
    chunk = tl.program_id(1)
    eps = tl.load(eps_ptr)  # a tensor, so that float64 kernels get a float64 eps
    dt = ct_ptr.dtype.element_ty
    i_idx = bi * BLOCK_B + tl.arange(0, BLOCK_B)
    i_ok = i_idx < n_r
    xs = tl.arange(0, W_DOT)
    xp = tl.arange(0, W_P2)
    c_ap = tl.load(c_ap_ptr + i_idx, mask=i_ok, other=0.0)[:, None]
    c_pa = tl.load(c_pa_ptr + i_idx, mask=i_ok, other=0.0)[:, None]
    c_pp = tl.load(c_pp_ptr + i_idx, mask=i_ok, other=0.0)[:, None]
    y_lo = chunk * rows_per_chunk
    y_hi = tl.minimum(H, y_lo + rows_per_chunk)
    for Y in range(y_lo, y_hi):
        rows_a = _rows_shared(ct_ptr, i_idx, i_ok, uy_ptr, Y, h, w, BLOCK_B, W_DOT)
        rows_p = _rows_of_p(ct_p_ptr, i_idx, i_ok, uy_ptr, vy_ptr, svy, Y, H, h, w, BLOCK_B, W_P2, WARPED)
        ra = tl.zeros([BLOCK_B, W_DOT], dtype=dt)
        rp = tl.zeros([BLOCK_B, W_P2], dtype=dt)
        for x0 in range(0, W, BLOCK_X):
            X = x0 + tl.arange(0, BLOCK_X)
            x_ok = X < W
            keep = i_ok[:, None] & x_ok[None, :]
            a = _tile_shared(rows_a, ux_ptr, X, x_ok, w, eps, mask_ptr, i_idx, i_ok, Y, sm0, sm1, sm2, W_DOT, PRECISION)
            if WARPED:
                vx_t = _vx_tile(vx_ptr, svx, i_idx, i_ok, X, x_ok, w, W_P2)
                p = tl.sum(rows_p[:, None, :] * vx_t, 2)
            else:
                p = _expand_shared(rows_p, ux_ptr, X, x_ok, w, W_P2, PRECISION)
            p = tl.where(keep, p + eps, 0.0)
            m = tl.load(mask_ptr + i_idx.to(tl.int64)[:, None] * sm0 + Y * sm1 + X[None, :] * sm2, mask=keep, other=0)
            d_a = tl.where(m != 0, c_ap * p, 0.0)
            ux_b = tl.load(ux_ptr + X[:, None] * w + xs[None, :], mask=x_ok[:, None] & (xs[None, :] < w), other=0.0)
            ra += _mm(d_a, ux_b, PRECISION)
            d_p = c_pa * a + c_pp * p
            if WARPED:
                rp += tl.sum(d_p[:, :, None] * vx_t, 1)
            else:
                ux_p = tl.load(ux_ptr + X[:, None] * w + xp[None, :], mask=x_ok[:, None] & (xp[None, :] < w), other=0.0)
                rp += _mm(d_p, ux_p, PRECISION)
        row = (Y * n_r + i_idx[:, None]).to(tl.int64) * w
        tl.store(ra_ptr + row + xs[None, :], ra, mask=i_ok[:, None] & (xs[None, :] < w))
        tl.store(rp_ptr + row + xp[None, :], rp, mask=i_ok[:, None] & (xp[None, :] < w))


# ----------------------------------------------------------------------------------------------------------------
# Drivers (same arguments and results as the C++ ops sgc_fast::contrast_sweep / contrast_sweep_backward)
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _stats_finish_kernel(
    gram_part_ptr,  # [gram_chunks, B, NQ]
    norm_part_ptr,  # [norm_chunks, 3, B]: |a|^2, a.p, |p|^2
    neg_part_ptr,  # [neg_chunks, 3, NQ] (separate negatives; channel 0 is |q|^2)
    gram_ptr, pos_ptr, na_ptr, np_ptr, nq_ptr,
    B, NQ, gram_chunks, norm_chunks, neg_chunks,
    SYMMETRIC: tl.constexpr, BLOCK: tl.constexpr,
):
    # The float64 sums over chunks of every partial, in chunk order, into the five stats; without separate
    # negatives only the Gram blocks on or above the diagonal were computed: the lower triangle mirrors them and
    # the diagonal is |a|^2.
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    B = tl.cast(B, tl.int64)  # (B >= 1: the caller handles an empty batch)
    NQ = tl.cast(NQ, tl.int64)
    n_gram = B * NQ
    ok = e < n_gram + 3 * B + NQ
    in_gram = e < n_gram
    i = e // NQ
    j = e - i * NQ
    # Output layout after the Gram: pos [B], |a|^2 [B], |p|^2 [B] (norm channels 1, 0, 2), then |q|^2 [NQ].
    f = e - n_gram
    in_norm = ok & (f >= 0) & (f < 3 * B)
    reg = tl.where(in_norm, f // B, 0)
    idx = tl.where(in_norm, f - reg * B, 0)
    ch = tl.where(reg == 0, 1, tl.where(reg == 1, 0, 2))
    k = f - 3 * B
    in_q = ok & (k >= 0)
    if SYMMETRIC:
        diag = in_gram & (i == j)
        a = tl.minimum(i, j)
        b = tl.maximum(i, j)
        from_norms = in_norm | diag | in_q  # the diagonal and |q|^2 are |a|^2
        from_neg = in_q & (k < 0)
    else:
        diag = in_gram & (i < 0)
        a = i
        b = j
        from_norms = in_norm
        from_neg = in_q
    idx = tl.where(diag, i, tl.where(in_q, k, idx))
    ch = tl.where(diag | in_q, 0, ch)
    from_gram = in_gram & ~diag
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for c in range(0, gram_chunks):
        acc += tl.load(gram_part_ptr + (c * B + a) * NQ + b, mask=from_gram, other=0.0).to(tl.float64)
    for c in range(0, norm_chunks):
        acc += tl.load(norm_part_ptr + (c * 3 + ch) * B + idx, mask=from_norms, other=0.0).to(tl.float64)
    for c in range(0, neg_chunks):
        acc += tl.load(neg_part_ptr + (c * 3) * NQ + k, mask=from_neg, other=0.0).to(tl.float64)
    tl.store(gram_ptr + e, acc, mask=in_gram)
    tl.store(pos_ptr + f, acc, mask=in_norm & (f < B))
    tl.store(na_ptr + (f - B), acc, mask=in_norm & (f >= B) & (f < 2 * B))
    tl.store(np_ptr + (f - 2 * B), acc, mask=in_norm & (f >= 2 * B))
    tl.store(nq_ptr + k, acc, mask=in_q)


@triton.jit
def _y_adjoint_kernel(
    m_ptr, sm_b,  # M [B or 1, H, h] (sm_b: its sample stride, 0 when shared)
    r1_ptr, r2_ptr,  # [H, n, w] row partials (r2 added when HAS_R2)
    out_ptr,  # [n, h, w] float64
    H, n, h, w,
    HAS_R2: tl.constexpr, BLOCK: tl.constexpr,
):
    # out[i, y, x] = sum_Y M[i, Y, y] (r1[Y, i, x] + r2[Y, i, x]), in float64: the adjoint of the y-interpolation.
    i = tl.program_id(0).to(tl.int64)
    n = tl.cast(n, tl.int64)
    h = tl.cast(h, tl.int64)
    w = tl.cast(w, tl.int64)
    e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = e < h * w
    y = e // w
    x = e - y * w
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for Y in range(0, H):
        mv = tl.load(m_ptr + i * sm_b + Y * h + y, mask=ok, other=0.0).to(tl.float64)
        rv = tl.load(r1_ptr + (Y * n + i) * w + x, mask=ok, other=0.0).to(tl.float64)
        if HAS_R2:
            rv += tl.load(r2_ptr + (Y * n + i) * w + x, mask=ok, other=0.0).to(tl.float64)
        acc += mv * rv
    tl.store(out_ptr + i * h * w + e, acc, mask=ok)


def _check_inputs(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask) -> None:
    torch._check(cam_aug.dim() == 3 and cam_orig.shape == cam_aug.shape,
                 lambda: f"cam_orig: shape {list(cam_orig.shape)} does not match cam_aug {list(cam_aug.shape)}")
    B, h, w = cam_aug.shape
    torch._check(uy.dim() == 2 and uy.shape[1] == h, lambda: f"uy: expected [H, {h}], got {list(uy.shape)}")
    torch._check(ux.dim() == 2 and ux.shape[1] == w, lambda: f"ux: expected [W, {w}], got {list(ux.shape)}")
    H, W = uy.shape[0], ux.shape[0]
    torch._check(mask.shape == (B, H, W) and mask.dtype == torch.uint8,
                 lambda: f"mask: expected uint8 [{B}, {H}, {W}], got {mask.dtype} {list(mask.shape)}")
    torch._check(vy.dim() == 3 and vy.shape[0] in (1, B) and tuple(vy.shape[1:]) == (H, h),
                 lambda: f"vy: expected [1 or {B}, {H}, {h}], got {list(vy.shape)}")
    torch._check(vx.dim() == 3 and vx.shape[0] == vy.shape[0] and tuple(vx.shape[1:]) == (W, w),
                 lambda: f"vx: expected [{vy.shape[0]}, {W}, {w}], got {list(vx.shape)}")
    torch._check(neg_cam.dim() == 3 and tuple(neg_cam.shape[1:]) == (h, w),
                 lambda: f"neg_cam: expected [N, {h}, {w}], got {list(neg_cam.shape)}")
    N = neg_cam.shape[0]
    torch._check(neg_mask.dtype == torch.uint8 and neg_mask.shape[0] == N
                 and (N == 0 or tuple(neg_mask.shape[1:]) == (H, W)),
                 lambda: f"neg_mask: expected uint8 [{N}, {H}, {W}], got {neg_mask.dtype} {list(neg_mask.shape)}")
    dt = cam_aug.dtype
    torch._check(dt in (torch.float32, torch.float64), lambda: f"cam_aug: expected float32 or float64, got {dt}")
    for name, t in (("cam_orig", cam_orig), ("neg_cam", neg_cam), ("uy", uy), ("ux", ux), ("vy", vy), ("vx", vx)):
        torch._check(t.dtype == dt, lambda name=name, t=t: f"{name}: expected the dtype of cam_aug ({dt}), got {t.dtype}")


@functools.lru_cache(maxsize=32)
def _eps_tensor(eps: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``eps`` as a one-element tensor (kernels read it in their own dtype); cached, read-only."""
    return torch.full((1,), eps, dtype=dtype, device=device)


class _Geometry:
    """Launch arguments shared by the kernels (contiguous CAMs and matrices, sizes, padded widths)."""

    def __init__(self, cam_aug, cam_orig, uy, ux, vy, vx, neg_cam, eps):
        self.ct_aug = cam_aug.contiguous()
        self.ct_orig = cam_orig.contiguous()
        self.ct_neg = neg_cam.contiguous()
        self.uy, self.ux = uy.contiguous(), ux.contiguous()
        self.vy, self.vx = vy.contiguous(), vx.contiguous()
        self.B, self.h, self.w = cam_aug.shape
        self.N = neg_cam.shape[0]
        self.H, self.W = uy.shape[0], ux.shape[0]
        self.svy = self.H * self.h if vy.shape[0] > 1 else 0
        self.svx = self.W * self.w if vx.shape[0] > 1 else 0
        if cacheable() and type(cam_aug) is torch.Tensor:
            self.eps = _eps_tensor(float(eps), cam_aug.dtype, cam_aug.device)
        else:  # traced (torch.compile, fake tensors): no cached real tensors
            self.eps = torch.full((1,), float(eps), dtype=cam_aug.dtype, device=cam_aug.device)
        self.w_dot = next_pow2(self.w, DOT_MIN)
        # The original view: per-sample warp (3-D broadcasts, width w_p2) or the shared upsampling (tl.dot).
        self.warped = vy.shape[0] > 1
        self.w_p = next_pow2(self.w) if self.warped else self.w_dot
        self.dev = cam_aug.device

    def chunks(self, programs_per_chunk: int) -> tuple[int, int]:
        """(number of row chunks, rows per chunk)."""
        n = split_count(self.dev, programs_per_chunk, self.H)
        rows = triton.cdiv(self.H, n)
        return triton.cdiv(self.H, rows), rows

    def geometry_args(self):
        return (self.uy, self.ux, self.H, self.W, self.h, self.w, self.eps)


def _blocks(n: int) -> int:
    return triton.cdiv(max(n, 1), _SIZING_BLOCK_B)


def _norm_parts(g: _Geometry, ct, mask, has_p: bool):
    """Per-chunk partial sums [chunks, 3, n] of |a|^2, a.p, |p|^2 (|q|^2 in channel 0 without p)."""
    n = ct.shape[0]
    n_chunks, rows = g.chunks(triton.cdiv(n, 16))
    part = ct.new_empty((n_chunks, 3, n))
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_B"]), n_chunks)  # noqa: E731
    launcher(_norms_kernel)[grid](
        part, ct, mask, *mask.stride(), n, g.ct_orig, g.vy, g.svy, g.vx, g.svx, *g.geometry_args(), rows,
        HAS_P=has_p, WARPED=g.warped, W_DOT=g.w_dot, W_P2=g.w_p, PRECISION=dot_precision(),
    )
    return part


def _norms(g: _Geometry, ct, mask, has_p: bool):
    part = _norm_parts(g, ct, mask, has_p)
    # One reduction per statistic: a custom op's outputs must not share storage.
    return [part[:, k].sum(0, dtype=torch.float64) for k in range(3)]


#: Outputs per program of the finishing kernel.
FINISH_BLOCK = 256


def contrast_sweep(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask, eps):
    """(gram [B, Nq], pos [B], |a|^2 [B], |p|^2 [B], |q|^2 [Nq]), float64; see the module docstring."""
    _check_inputs(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask)
    g = _Geometry(cam_aug, cam_orig, uy, ux, vy, vx, neg_cam, eps)
    if g.B > 0:
        return _sweep_stats(g, mask, neg_mask)
    # No rows: only the separate negatives' norms are left to compute (outputs must not share storage).
    f = lambda *shape: g.ct_aug.new_empty(shape, dtype=torch.float64)  # noqa: E731
    norm_neg = _norms(g, g.ct_neg, neg_mask, False)[0] if g.N > 0 else f(0)
    return f(0, g.N), f(0), f(0), f(0), norm_neg


def _sweep_stats(g: _Geometry, mask, neg_mask):
    """The forward for B >= 1: norm and Gram partials, then one launch sums them into the five stats."""
    B, separate = g.B, g.N > 0
    norm_part = _norm_parts(g, g.ct_aug, mask, True)
    if separate:
        ct_c, mask_c, NQ = g.ct_neg, neg_mask, g.N
        n_pairs = _blocks(B) * _blocks(NQ)
        neg_part = _norm_parts(g, g.ct_neg, neg_mask, False)
    else:
        ct_c, mask_c, NQ = g.ct_aug, mask, B
        n_pairs = _blocks(B) * (_blocks(B) + 1) // 2
        neg_part = norm_part  # not read
    n_chunks, rows = g.chunks(n_pairs)
    part = g.ct_aug.new_empty((n_chunks, B, NQ))
    grid = lambda meta: (triton.cdiv(B, meta["BLOCK_B"]) * triton.cdiv(NQ, meta["BLOCK_B"]), n_chunks)  # noqa: E731
    launcher(_gram_kernel)[grid](
        part, g.ct_aug, mask, *mask.stride(), B, ct_c, mask_c, *mask_c.stride(), NQ, *g.geometry_args(), rows,
        SYMMETRIC=not separate, REUSE_DIAG=REUSE_DIAGONAL_TILE, W_DOT=g.w_dot, PRECISION=dot_precision(),
    )
    f = lambda *shape: g.ct_aug.new_empty(shape, dtype=torch.float64)  # noqa: E731
    gram, pos, norm_aug, norm_orig, norm_neg = f(B, NQ), f(B), f(B), f(B), f(NQ)
    total = B * NQ + 3 * B + NQ
    launcher(_stats_finish_kernel)[(triton.cdiv(total, FINISH_BLOCK),)](
        part, norm_part, neg_part, gram, pos, norm_aug, norm_orig, norm_neg, B, NQ, part.shape[0],
        norm_part.shape[0], neg_part.shape[0] if separate else 0, SYMMETRIC=not separate, BLOCK=FINISH_BLOCK,
    )
    return gram, pos, norm_aug, norm_orig, norm_neg


def _y_adjoint_rows(m: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor | None = None) -> torch.Tensor:
    """g[i, y, x] = sum_Y M[i or 0, Y, y] (r1 + r2)[Y, i, x] in float64, one launch (``m`` [H, h] or
    [1 or B, H, h]; ``r1``, ``r2`` [H, n, w] contiguous)."""
    H, n, w = r1.shape
    h = m.shape[-1]
    sm_b = H * h if m.dim() == 3 and m.shape[0] > 1 else 0
    out = r1.new_empty((n, h, w), dtype=torch.float64)
    if n and h * w:
        blk = min(256, next_pow2(h * w, 16))
        launcher(_y_adjoint_kernel)[(n, triton.cdiv(h * w, blk))](
            m.contiguous(), sm_b, r1, r2 if r2 is not None else r1, out, H, n, h, w, HAS_R2=r2 is not None, BLOCK=blk,
        )
    return out


def _field_rows(g: _Geometry, ct_r, mask_r, ct_c, mask_c, coef, self_coef):
    """x-adjoint rows [H, n_r, w] of mask_r . (coef @ tiles_c + self_coef . tiles_r)."""
    n_r, n_c = ct_r.shape[0], ct_c.shape[0]
    n_chunks, rows = g.chunks(_blocks(n_r))
    out = ct_r.new_empty((g.H, n_r, g.w))
    coef = coef.to(ct_r.dtype).contiguous()
    has_self = self_coef is not None
    self_coef = self_coef.to(ct_r.dtype).contiguous() if has_self else coef
    grid = lambda meta: (triton.cdiv(n_r, meta["BLOCK_B"]), n_chunks)  # noqa: E731
    launcher(_field_grad_kernel)[grid](
        out, ct_r, mask_r, *mask_r.stride(), n_r, ct_c, mask_c, *mask_c.stride(), n_c, coef, self_coef,
        *g.geometry_args(), rows, HAS_SELF=has_self, W_DOT=g.w_dot, PRECISION=dot_precision(),
    )
    return out


def contrast_sweep_backward(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask, eps,
                            coef_aa, coef_aq, coef_qa, coef_qq, coef_ap, coef_pa, coef_pp):
    """Gradients (float64) w.r.t. (ct_aug [B,h,w], ct_orig [B,h,w], ct_neg [N,h,w]) of the fields."""
    _check_inputs(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask)
    g = _Geometry(cam_aug, cam_orig, uy, ux, vy, vx, neg_cam, eps)
    B, N, dt = g.B, g.N, g.ct_aug.dtype
    if N > 0:
        # With separate negatives C_aa is diagonal (sgc_fast.contrast.coefficients): a self term.
        r_aug = _field_rows(g, g.ct_aug, mask, g.ct_neg, neg_mask, coef_aq, coef_aa.diagonal())
        r_neg = _field_rows(g, g.ct_neg, neg_mask, g.ct_aug, mask, coef_qa, coef_qq)
        grad_neg = _y_adjoint_rows(g.uy, r_neg)
    else:
        r_aug = _field_rows(g, g.ct_aug, mask, g.ct_aug, mask, coef_aa, None)
        grad_neg = g.ct_neg.new_zeros(g.ct_neg.shape, dtype=torch.float64)
    n_chunks, rows = g.chunks(triton.cdiv(B, 16))
    ra = g.ct_aug.new_empty((g.H, B, g.w))
    rp = g.ct_aug.new_empty((g.H, B, g.w))
    grid = lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), n_chunks)  # noqa: E731
    launcher(_pos_grad_kernel)[grid](
        ra, rp, g.ct_aug, mask, *mask.stride(), B, g.ct_orig, g.vy, g.svy, g.vx, g.svx,
        coef_ap.to(dt).contiguous(), coef_pa.to(dt).contiguous(), coef_pp.to(dt).contiguous(),
        *g.geometry_args(), rows, WARPED=g.warped, W_DOT=g.w_dot, W_P2=g.w_p, PRECISION=dot_precision(),
    )
    grad_aug = _y_adjoint_rows(g.uy, r_aug, ra)
    grad_orig = _y_adjoint_rows(g.vy, rp)
    return grad_aug, grad_orig, grad_neg


# ----------------------------------------------------------------------------------------------------------------
# Ops with the C++ schemas, for CUDA tensors (torch.compile sees the kernels through wrap_triton)
# ----------------------------------------------------------------------------------------------------------------


@torch.library.triton_op("sgc_fast::triton_contrast_sweep", mutates_args=())
def _contrast_sweep_op(
    cam_aug: torch.Tensor, cam_orig: torch.Tensor, mask: torch.Tensor, uy: torch.Tensor, ux: torch.Tensor,
    vy: torch.Tensor, vx: torch.Tensor, neg_cam: torch.Tensor, neg_mask: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return contrast_sweep(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask, eps)


@torch.library.triton_op("sgc_fast::triton_contrast_sweep_backward", mutates_args=())
def _contrast_sweep_backward_op(
    cam_aug: torch.Tensor, cam_orig: torch.Tensor, mask: torch.Tensor, uy: torch.Tensor, ux: torch.Tensor,
    vy: torch.Tensor, vx: torch.Tensor, neg_cam: torch.Tensor, neg_mask: torch.Tensor, eps: float,
    coef_aa: torch.Tensor, coef_aq: torch.Tensor, coef_qa: torch.Tensor, coef_qq: torch.Tensor,
    coef_ap: torch.Tensor, coef_pa: torch.Tensor, coef_pp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return contrast_sweep_backward(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask, eps,
                                   coef_aa, coef_aq, coef_qa, coef_qq, coef_ap, coef_pa, coef_pp)
