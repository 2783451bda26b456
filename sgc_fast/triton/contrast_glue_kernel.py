"""The float64 glue of contrast_logits in Triton: the same four ops as csrc/contrast_glue.h (and the same formulas
as the plain-PyTorch glue of :mod:`sgc_fast.contrast`), for the Triton backend where the extension has no CUDA
kernels:

- :func:`normalise`: ``ct = cam / total``, ``total = w.cam + eps`` per sample (one program per sample);
- :func:`epilogue`: logits from the stats (program per row and column block) and the stats packed into one
  float64 buffer (``torch.cat``);
- :func:`coefficients`: the coefficient matrices of the backward's fields, one launch: program i < B walks Gram
  row i (kappa_a, the row of C_aa or C_aq, the diagonal terms), program B + k column k of the separate
  negatives (kappa_q, the row k of C_qa);
- :func:`unnormalise`: chain d/d(ct) to d/d(cam) (one program per sample).

Scalars that must stay float64 (eps, the temperature, the normalisation floor) are read from a cached
float64 device tensor: Triton passes Python floats as float32. (The first call with a new eps or temperature
copies it to the device: run one step before capturing a CUDA graph.) Launches run under the tensors'
device (Triton would use the current one); offsets are 64-bit. Reductions are fixed-order ``tl.sum`` trees
over fixed blocks: results are reproducible run to run. The kernels run inside the opaque custom op
``sgc_fast::triton_contrast_logits`` (or under the interpreter), so they are launched directly.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..reference import NORM_EPS
from . import contrast_lowres_kernel
from .launch import next_pow2, on_device, scalars

__all__ = ["normalise", "epilogue", "coefficients", "unnormalise", "warp_matrices", "lowres_stats", "lowres_grads"]

#: Elements per block of the per-sample passes and of the row/column walks.
BLOCK = 256
NUM_WARPS = 4


@triton.jit
def _inv_norm(sq, floor):
    # 1 / max(sqrt(max(sq, 0)), floor) with NaN kept, and whether the norm is above the floor.
    n = tl.sqrt(tl.where(sq < 0, 0.0, sq))
    return 1.0 / tl.where(n < floor, floor, n), n > floor


@triton.jit
def _normalise_kernel(cam_ptr, w_ptr, scal_ptr, ct_ptr, total_ptr, n, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.cast(n, tl.int64)
    eps = tl.load(scal_ptr)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        p = start + tl.arange(0, BLOCK)
        ok = p < n
        c = tl.load(cam_ptr + b * n + p, mask=ok, other=0.0).to(tl.float64)
        acc += c * tl.load(w_ptr + p, mask=ok, other=0.0)
    s = tl.sum(acc, 0) + eps
    tl.store(total_ptr + b, s)
    for start in range(0, n, BLOCK):
        p = start + tl.arange(0, BLOCK)
        ok = p < n
        c = tl.load(cam_ptr + b * n + p, mask=ok, other=0.0).to(tl.float64)
        tl.store(ct_ptr + b * n + p, (c / s).to(ct_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _unnormalise_kernel(g_ptr, cam_ptr, total_ptr, w_ptr, out_ptr, n, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.cast(n, tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        p = start + tl.arange(0, BLOCK)
        ok = p < n
        c = tl.load(cam_ptr + b * n + p, mask=ok, other=0.0).to(tl.float64)
        acc += tl.load(g_ptr + b * n + p, mask=ok, other=0.0) * c
    tb = tl.load(total_ptr + b)
    inner = tl.sum(acc, 0) / (tb * tb)
    for start in range(0, n, BLOCK):
        p = start + tl.arange(0, BLOCK)
        ok = p < n
        g = tl.load(g_ptr + b * n + p, mask=ok, other=0.0)
        d = g / tb - inner * tl.load(w_ptr + p, mask=ok, other=0.0)
        if out_ptr.dtype.element_ty != tl.float64:
            d = d.to(tl.float32)  # 16-bit outputs round through float32, as torch's conversions do
        tl.store(out_ptr + b * n + p, d.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _epilogue_kernel(gram_ptr, pos_ptr, na_ptr, np_ptr, nq_ptr, self_ptr, scal_ptr, out_ptr, NQ, ncols,
                     SEPARATE: tl.constexpr, HAS_SELF: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    NQ = tl.cast(NQ, tl.int64)
    ncols = tl.cast(ncols, tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    t = tl.load(scal_ptr)
    floor = tl.load(scal_ptr + 1)
    sa, _ = _inv_norm(tl.load(na_ptr + i), floor)
    sp, _ = _inv_norm(tl.load(np_ptr + i), floor)
    pos = tl.load(pos_ptr + i) * sa * sp / t
    neg = c > 0
    ok = (c < ncols) & neg
    if SEPARATE:
        j = c - 1
    else:
        j = tl.where(c - 1 < i, c - 1, c)  # skip the diagonal
    j = tl.where(ok, j, 0)
    if SEPARATE:
        sq, _ = _inv_norm(tl.load(nq_ptr + j, mask=ok, other=1.0), floor)
    else:
        sq, _ = _inv_norm(tl.load(na_ptr + j, mask=ok, other=1.0), floor)
    val = tl.load(gram_ptr + i * NQ + j, mask=ok, other=0.0) * sa * sq / t
    if HAS_SELF:
        val = tl.where(j == tl.load(self_ptr + i), float("-inf"), val)
    val = tl.where(neg, val, pos)
    tl.store(out_ptr + i * ncols + c, val.to(out_ptr.dtype.element_ty), mask=c < ncols)


@triton.jit
def _dcos(g_ptr, ncols, row, col, ok, t, SEPARATE: tl.constexpr):
    # d loss / d cos(a_row, column col), / t; 0 on the diagonal without separate negatives (self columns are
    # handled by the caller).
    if SEPARATE:
        gc = col
        keep = ok
    else:
        gc = tl.where(col < row, col, col - 1)
        keep = ok & (col != row)
    return tl.load(g_ptr + row * ncols + 1 + tl.where(keep, gc, 0), mask=keep, other=0.0).to(tl.float64) / t


@triton.jit
def _coefficients_kernel(stats_ptr, g_ptr, self_ptr, scal_ptr, caa_ptr, caq_ptr, cqa_ptr, cqq_ptr, cap_ptr, cpp_ptr,
                         B, NQ, ncols, SEPARATE: tl.constexpr, HAS_SELF: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    B = tl.cast(B, tl.int64)  # every offset below in 64 bits
    NQ = tl.cast(NQ, tl.int64)
    ncols = tl.cast(ncols, tl.int64)
    t = tl.load(scal_ptr)
    floor = tl.load(scal_ptr + 1)
    # Packed stats: [gram B*NQ | pos B | |a|^2 B | |p|^2 B | |q|^2 NQ].
    pos_ptr = stats_ptr + B * NQ
    na_ptr = pos_ptr + B
    np_ptr = na_ptr + B
    nq_ptr = np_ptr + B
    offs = tl.arange(0, BLOCK).to(tl.int64)
    if pid < B:  # Gram row i
        i = pid
        sa, on_a = _inv_norm(tl.load(na_ptr + i), floor)
        if HAS_SELF:
            self_i = tl.load(self_ptr + i)
        else:
            self_i = -1
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for start in range(0, NQ, BLOCK):
            j = start + offs
            ok = j < NQ
            jj = tl.where(ok, j, 0)
            if SEPARATE:
                sq, _ = _inv_norm(tl.load(nq_ptr + jj, mask=ok, other=1.0), floor)
            else:
                sq, _ = _inv_norm(tl.load(na_ptr + jj, mask=ok, other=1.0), floor)
            cos = tl.load(stats_ptr + i * NQ + jj, mask=ok, other=0.0) * sa * sq
            d = _dcos(g_ptr, ncols, i, jj, ok, t, SEPARATE)
            if SEPARATE:
                d = tl.where(jj == self_i, 0.0, d)
                tl.store(caq_ptr + i * NQ + j, sa * d * sq, mask=ok)
            else:
                d = d + _dcos(g_ptr, ncols, jj, i, ok, t, SEPARATE)  # cos(a_i, a_j) is also in row j
                tl.store(caa_ptr + i * B + j, sa * d * sq, mask=ok & (j != i))
            acc += tl.where(ok, d * cos, 0.0)
        if SEPARATE:  # C_aa is diagonal with separate negatives
            for start in range(0, B, BLOCK):
                j = start + offs
                tl.store(caa_ptr + i * B + j, tl.zeros([BLOCK], dtype=tl.float64), mask=(j < B) & (j != i))
        sp, on_p = _inv_norm(tl.load(np_ptr + i), floor)
        q = tl.load(g_ptr + i * ncols).to(tl.float64) / t
        cos_pos = tl.load(pos_ptr + i) * sa * sp
        kappa = tl.sum(acc, 0) + q * cos_pos
        x = tl.where(on_a, kappa * sa * sa, 0.0)
        if SEPARATE:
            tl.store(caa_ptr + i * B + i, -x)
        else:
            tl.store(caa_ptr + i * B + i, 0.0 - x)  # as the PyTorch form: a zero diagonal entry is +0.0
        tl.store(cap_ptr + i, q * sa * sp)
        tl.store(cpp_ptr + i, -tl.where(on_p, q * cos_pos * sp * sp, 0.0))
    else:  # column k of the separate negatives
        k = pid - B
        sq, on_q = _inv_norm(tl.load(nq_ptr + k), floor)
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        for start in range(0, B, BLOCK):
            i = start + offs
            ok = i < B
            ii = tl.where(ok, i, 0)
            sa, _ = _inv_norm(tl.load(na_ptr + ii, mask=ok, other=1.0), floor)
            cos = tl.load(stats_ptr + ii * NQ + k, mask=ok, other=0.0) * sa * sq
            d = _dcos(g_ptr, ncols, ii, k, ok, t, SEPARATE)
            if HAS_SELF:
                d = tl.where(tl.load(self_ptr + ii, mask=ok, other=-1) == k, 0.0, d)
            tl.store(cqa_ptr + k * B + i, sa * d * sq, mask=ok)
            acc += tl.where(ok, d * cos, 0.0)
        kappa = tl.sum(acc, 0)
        tl.store(cqq_ptr + k, -tl.where(on_q, kappa * sq * sq, 0.0))


def warp_matrices(crop, flip, size, cam_size):
    """The CGC warp matrices (:mod:`.contrast_lowres_kernel`)."""
    return contrast_lowres_kernel.warp_matrices(crop, flip, size, cam_size)


def lowres_stats(pb):
    """The unmasked closed form (:mod:`.contrast_lowres_kernel`)."""
    return contrast_lowres_kernel.lowres_stats(pb)


def lowres_grads(pb, coefs):
    return contrast_lowres_kernel.lowres_grads(pb, coefs)


def _block(n: int) -> int:
    return min(BLOCK, next_pow2(n, 16))


def _self_long(self_index):
    if self_index is None:
        return None
    return self_index.to(torch.int64).contiguous()


def normalise(cam: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype):
    """``(cam / total)`` in ``dtype`` and ``total = w.cam + eps`` (float64), per sample."""
    cam = cam.contiguous()
    B, h, w = cam.shape
    ct = torch.empty((B, h, w), dtype=dtype, device=cam.device)
    total = torch.empty((B,), dtype=torch.float64, device=cam.device)
    if B:
        with on_device(cam.device):
            _normalise_kernel[(B,)](cam, weight.contiguous(), scalars(cam.device, float(eps)), ct, total, h * w,
                                    BLOCK=_block(h * w), num_warps=NUM_WARPS)
    return ct, total


def unnormalise(grad_ct: torch.Tensor, cam: torch.Tensor, total: torch.Tensor, weight: torch.Tensor):
    """d/d(cam) of ``ct = cam / total`` from d/d(ct) (float64), in cam's dtype."""
    cam = cam.contiguous()
    B, h, w = cam.shape
    out = torch.empty_like(cam)
    if B:
        with on_device(cam.device):
            _unnormalise_kernel[(B,)](grad_ct.contiguous(), cam, total.contiguous(), weight.contiguous(), out, h * w,
                                      BLOCK=_block(h * w), num_warps=NUM_WARPS)
    return out


def epilogue(stats, self_index, separate: bool, temperature: float, dtype: torch.dtype):
    """``(logits, packed stats)``: the logits laid out as :func:`sgc_fast.contrast.logits_from_stats` does."""
    gram, pos, na, np_, nq = (s.contiguous() for s in stats)
    B, NQ = gram.shape
    ncols = 1 + NQ if separate else B
    logits = torch.empty((B, ncols), dtype=dtype, device=gram.device)
    self_index = _self_long(self_index)
    if B:
        blk = _block(ncols)
        with on_device(gram.device):
            _epilogue_kernel[(B, triton.cdiv(ncols, blk))](
                gram, pos, na, np_, nq, self_index if self_index is not None else gram,
                scalars(gram.device, float(temperature), NORM_EPS), logits, NQ, ncols,
                SEPARATE=separate, HAS_SELF=self_index is not None, BLOCK=blk, num_warps=NUM_WARPS,
            )
    return logits, torch.cat([gram.reshape(-1), pos, na, np_, nq])


def coefficients(packed: torch.Tensor, grad_logits: torch.Tensor, self_index, separate: bool, temperature: float):
    """``(c_aa, c_aq, c_qa, c_qq, c_ap, c_pp)`` as :func:`sgc_fast.contrast.coefficients` (which also returns
    c_pa = c_ap)."""
    grad = grad_logits.contiguous()
    B, ncols = grad.shape
    NQ = ncols - 1 if separate else B
    N = NQ if separate else 0
    f = functools.partial(torch.empty, dtype=torch.float64, device=grad.device)
    caa, caq, cqa, cqq, cap, cpp = f((B, B)), f((B, N)), f((N, B)), f((N,)), f((B,)), f((B,))
    self_index = _self_long(self_index)
    if B + N:  # (B = 0 with negatives still writes c_qq)
        with on_device(grad.device):
            _coefficients_kernel[(B + N,)](
                packed.contiguous(), grad, self_index if self_index is not None else grad,
                scalars(grad.device, float(temperature), NORM_EPS), caa, caq, cqa, cqq, cap, cpp, B, NQ, ncols,
                SEPARATE=separate, HAS_SELF=self_index is not None, BLOCK=_block(max(B, NQ, 1)), num_warps=NUM_WARPS,
            )
    return caa, caq, cqa, cqq, cap, cpp
