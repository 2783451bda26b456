"""The unmasked (CGC) part of the float64 glue in Triton: the per-sample warp matrices and the closed forms on the
h x w grid -- the same ops as ``sgc_fast::warp_matrices`` / ``contrast_lowres_stats`` / ``contrast_lowres_grads``
(csrc/contrast_glue.h) and the same formulas as :func:`sgc_fast.interp.warp_matrices`,
:func:`sgc_fast.contrast.lowres_stats` and :func:`sgc_fast.contrast.lowres_grads`.

- :func:`warp_matrices`: one program per (sample, block of entries) and axis, entries computed from the box
  (no gathers): two launches;
- :func:`lowres_stats`: one program per sample (and per separate negative) forms ``Ay = Uy^T Vy_i``,
  ``Ax``, ``Cy = Vy_i^T Vy_i``, ``Cx`` and the column sums by a loop over the H (W) rows, then the maps
  ``M c``, ``Ay c Ax^T``, ``Cy c Cx^T`` as broadcast sums of [h, h, w] and [h, w, w] tiles, and the per-sample
  inner products; a second launch forms the Gram matrix;
- :func:`lowres_grads`: one launch, programs over the rows of the three gradients.

The tiles hold a whole h x w map, so maps larger than ``MAX_SIDE`` on a side fall back to the PyTorch form.
The products the backward needs stay in the problem's memo from the forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import next_pow2, on_device, scalars

__all__ = ["MAX_SIDE", "warp_matrices", "lowres_stats", "lowres_grads"]

#: Largest h or w the register tiles take ([h, h, w] broadcast tiles in registers; larger maps use the PyTorch
#: form). 16 covers 7x7 and 14x14 CAMs.
MAX_SIDE = 16
NUM_WARPS = 4
#: Entries of a warp matrix per program.
WARP_BLOCK = 256


@triton.jit
def _upsample_entry(r, y, n, m):
    # Entry (r, y) of the n x m bilinear upsampling (align_corners=False), accumulated as index_put_ does.
    scale = m.to(tl.float64) / n.to(tl.float64)
    src = (r.to(tl.float64) + 0.5) * scale - 0.5
    src = tl.where(src < 0.0, 0.0, src)
    i0 = tl.minimum(tl.floor(src).to(tl.int64), m - 1)
    i1 = tl.minimum(i0 + 1, m - 1)
    lam = src - i0.to(tl.float64)
    return tl.where(y == i0, 1.0 - lam, 0.0) + tl.where(y == i1, lam, 0.0)


@triton.jit
def _warp_kernel(crop_ptr, flip_ptr, out_ptr, n, m, AXIS: tl.constexpr, FLIP: tl.constexpr, BLOCK: tl.constexpr):
    # out[b, r, y] for r < n, y < m: upsample m -> n, crop (start, length) of the n axis, resize back, flip.
    b = tl.program_id(0).to(tl.int64)
    n = tl.cast(n, tl.int64)
    m = tl.cast(m, tl.int64)
    e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = e < n * m
    r = e // m
    y = e % m
    start = tl.load(crop_ptr + 4 * b + AXIS)
    length = tl.load(crop_ptr + 4 * b + AXIS + 2)
    if FLIP:
        r = tl.where(tl.load(flip_ptr + b) != 0, n - 1 - r, r)  # a mirrored crop reads its rows backwards
    src = (r.to(tl.float64) + 0.5) * (length.to(tl.float64) / n.to(tl.float64)) - 0.5
    src = tl.where(src < 0.0, 0.0, src)
    i0 = tl.minimum(tl.floor(src).to(tl.int64), length - 1)
    i1 = tl.minimum(i0 + 1, length - 1)
    lam = src - i0.to(tl.float64)
    v = (1.0 - lam) * _upsample_entry(start + i0, y, n, m) + lam * _upsample_entry(start + i1, y, n, m)
    tl.store(out_ptr + b * n * m + e, v, mask=ok)


@triton.jit
def _sep(P, c, Q):
    # P c Q^T for register tiles P [BH, BH], c [BH, BW], Q [BW, BW] (zero padded).
    t = tl.sum(P[:, :, None] * c[None, :, :], axis=1)
    return tl.sum(t[:, None, :] * Q[None, :, :], axis=2)


@triton.jit
def _sep_t(P, c, Q):
    # P^T c Q for the same tiles.
    t = tl.sum(P[:, :, None] * c[:, None, :], axis=0)
    return tl.sum(t[:, :, None] * Q[None, :, :], axis=1)


@triton.jit
def _map_tile(h, w, BH: tl.constexpr, BW: tl.constexpr):
    # Row and column indices of an h x w map in a [BH, BW] tile, their masks, and the flat offsets.
    ia = tl.arange(0, BH).to(tl.int64)
    ib = tl.arange(0, BW).to(tl.int64)
    ok_h = ia < h
    ok_w = ib < w
    return ia, ib, ok_h, ok_w, ok_h[:, None] & ok_w[None, :], ia[:, None] * w + ib[None, :]


@triton.jit
def _axis_products(u_ptr, v_ptr, n, m, idx, ok, BM: tl.constexpr):
    # U^T V, V^T V and V^T 1 of one axis (U, V [n, m]), by a loop over the n rows.
    A = tl.zeros([BM, BM], dtype=tl.float64)
    C = tl.zeros([BM, BM], dtype=tl.float64)
    S = tl.zeros([BM], dtype=tl.float64)
    for r in range(0, n):
        u = tl.load(u_ptr + r * m + idx, mask=ok, other=0.0)
        v = tl.load(v_ptr + r * m + idx, mask=ok, other=0.0)
        A += u[:, None] * v[None, :]
        C += v[:, None] * v[None, :]
        S += v
    return A, C, S


@triton.jit
def _lowres_prep_kernel(ca_ptr, co_ptr, cq_ptr, uy_ptr, ux_ptr, vy_ptr, vx_ptr, my_ptr, mx_ptr, wt_ptr, scal_ptr,
                        m_ptr, uv_ptr, vv_ptr, col_ptr, ay_ptr, ax_ptr, r_ptr, pos_ptr, na_ptr, np_ptr, nq_ptr,
                        B, h, w, H, W, WARPED: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr):
    item = tl.program_id(0).to(tl.int64)
    B = tl.cast(B, tl.int64)
    h = tl.cast(h, tl.int64)
    w = tl.cast(w, tl.int64)
    H = tl.cast(H, tl.int64)
    W = tl.cast(W, tl.int64)
    hw = h * w
    eps = tl.load(scal_ptr)
    tail = tl.load(scal_ptr + 1)
    ia, ib, ok_h, ok_w, ok2, off2 = _map_tile(h, w, BH, BW)
    MY = tl.load(my_ptr + ia[:, None] * h + ia[None, :], mask=ok_h[:, None] & ok_h[None, :], other=0.0)
    MX = tl.load(mx_ptr + ib[:, None] * w + ib[None, :], mask=ok_w[:, None] & ok_w[None, :], other=0.0)
    WT = tl.load(wt_ptr + off2, mask=ok2, other=0.0)
    if item >= B:  # a separate negative: M c, its total and squared norm
        k = item - B
        c = tl.load(cq_ptr + k * hw + off2, mask=ok2, other=0.0)
        mk = _sep(MY, c, MX)
        tl.store(m_ptr + item * hw + off2, mk, mask=ok2)
        rr = tl.sum(tl.sum(c * WT, 1), 0)
        tl.store(r_ptr + item, rr)
        tl.store(nq_ptr + k, tl.sum(tl.sum(c * mk, 1), 0) + 2 * eps * rr + tail)
    else:
        i = item
        if WARPED:
            vy_i = vy_ptr + i * H * h
            vx_i = vx_ptr + i * W * w
        else:
            vy_i = vy_ptr
            vx_i = vx_ptr
        AY, CY, SY = _axis_products(uy_ptr, vy_i, H, h, ia, ok_h, BH)
        AX, CX, SX = _axis_products(ux_ptr, vx_i, W, w, ib, ok_w, BW)
        tl.store(ay_ptr + i * h * h + ia[:, None] * h + ia[None, :], AY, mask=ok_h[:, None] & ok_h[None, :])
        tl.store(ax_ptr + i * w * w + ib[:, None] * w + ib[None, :], AX, mask=ok_w[:, None] & ok_w[None, :])
        c_aug = tl.load(ca_ptr + i * hw + off2, mask=ok2, other=0.0)
        c_orig = tl.load(co_ptr + i * hw + off2, mask=ok2, other=0.0)
        mi = _sep(MY, c_aug, MX)
        uvi = _sep(AY, c_orig, AX)
        vvi = _sep(CY, c_orig, CX)
        col = SY[:, None] * SX[None, :]
        tl.store(m_ptr + i * hw + off2, mi, mask=ok2)
        tl.store(uv_ptr + i * hw + off2, uvi, mask=ok2)
        tl.store(vv_ptr + i * hw + off2, vvi, mask=ok2)
        tl.store(col_ptr + i * hw + off2, col, mask=ok2)
        r = tl.sum(tl.sum(c_aug * WT, 1), 0)
        rho = tl.sum(tl.sum(c_orig * col, 1), 0)
        tl.store(r_ptr + i, r)
        tl.store(pos_ptr + i, tl.sum(tl.sum(c_aug * uvi, 1), 0) + eps * (r + rho) + tail)
        tl.store(na_ptr + i, tl.sum(tl.sum(c_aug * mi, 1), 0) + 2 * eps * r + tail)
        tl.store(np_ptr + i, tl.sum(tl.sum(c_orig * vvi, 1), 0) + 2 * eps * rho + tail)


@triton.jit
def _lowres_gram_kernel(m_ptr, cols_ptr, r_ptr, rc_ptr, na_ptr, scal_ptr, gram_ptr, nq_ptr, NQ, hw,
                        SEPARATE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    NQ = tl.cast(NQ, tl.int64)
    hw = tl.cast(hw, tl.int64)
    eps = tl.load(scal_ptr)
    tail = tl.load(scal_ptr + 1)
    p = tl.arange(0, BLOCK).to(tl.int64)
    ok = p < hw
    mi = tl.load(m_ptr + i * hw + p, mask=ok, other=0.0)
    ri = tl.load(r_ptr + i)
    for j in range(0, NQ):
        cj = tl.load(cols_ptr + j * hw + p, mask=ok, other=0.0)
        tl.store(gram_ptr + i * NQ + j, tl.sum(mi * cj, 0) + eps * (ri + tl.load(rc_ptr + j)) + tail)
    if not SEPARATE:
        tl.store(nq_ptr + i, tl.load(na_ptr + i))  # q = a


@triton.jit
def _lowres_grads_kernel(ca_ptr, m_ptr, uv_ptr, vv_ptr, col_ptr, ay_ptr, ax_ptr, wt_ptr, scal_ptr,
                         caa_ptr, caq_ptr, cqa_ptr, cqq_ptr, cap_ptr, cpa_ptr, cpp_ptr, ga_ptr, go_ptr, gq_ptr,
                         B, N, h, w, BH: tl.constexpr, BW: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    B = tl.cast(B, tl.int64)
    N = tl.cast(N, tl.int64)
    h = tl.cast(h, tl.int64)
    w = tl.cast(w, tl.int64)
    hw = h * w
    eps = tl.load(scal_ptr)
    ia, ib, ok_h, ok_w, ok2, off2 = _map_tile(h, w, BH, BW)
    EW = eps * tl.load(wt_ptr + off2, mask=ok2, other=0.0)
    if pid < B:  # g_aug_i = sum_j C_aa[i,j] U^T a_j + c_ap_i U^T p_i + sum_k C_aq[i,k] U^T q_k
        i = pid
        s = tl.zeros([BH, BW], dtype=tl.float64)
        for j in range(0, B):
            s += tl.load(caa_ptr + i * B + j) * (tl.load(m_ptr + j * hw + off2, mask=ok2, other=0.0) + EW)
        s += tl.load(cap_ptr + i) * (tl.load(uv_ptr + i * hw + off2, mask=ok2, other=0.0) + EW)
        if N > 0:
            sq = tl.zeros([BH, BW], dtype=tl.float64)
            for k in range(0, N):
                sq += tl.load(caq_ptr + i * N + k) * (tl.load(m_ptr + (B + k) * hw + off2, mask=ok2, other=0.0) + EW)
            s = s + sq
        tl.store(ga_ptr + i * hw + off2, s, mask=ok2)
    elif pid < 2 * B:  # g_orig_i = c_pa_i (Ay^T c_aug_i Ax + eps col_i) + c_pp_i (vv_i + eps col_i)
        i = pid - B
        AY = tl.load(ay_ptr + i * h * h + ia[:, None] * h + ia[None, :], mask=ok_h[:, None] & ok_h[None, :], other=0.0)
        AX = tl.load(ax_ptr + i * w * w + ib[:, None] * w + ib[None, :], mask=ok_w[:, None] & ok_w[None, :], other=0.0)
        vt = _sep_t(AY, tl.load(ca_ptr + i * hw + off2, mask=ok2, other=0.0), AX)
        e1 = eps * tl.load(col_ptr + i * hw + off2, mask=ok2, other=0.0)
        vv = tl.load(vv_ptr + i * hw + off2, mask=ok2, other=0.0)
        tl.store(go_ptr + i * hw + off2, tl.load(cpa_ptr + i) * (vt + e1) + tl.load(cpp_ptr + i) * (vv + e1), mask=ok2)
    else:  # g_neg_k = sum_i C_qa[k,i] U^T a_i + c_qq_k U^T q_k
        k = pid - 2 * B
        s = tl.zeros([BH, BW], dtype=tl.float64)
        for i in range(0, B):
            s += tl.load(cqa_ptr + k * B + i) * (tl.load(m_ptr + i * hw + off2, mask=ok2, other=0.0) + EW)
        q = tl.load(m_ptr + (B + k) * hw + off2, mask=ok2, other=0.0) + EW
        tl.store(gq_ptr + k * hw + off2, s + tl.load(cqq_ptr + k) * q, mask=ok2)


def fits(h: int, w: int) -> bool:
    return max(h, w) <= MAX_SIDE


def warp_matrices(crop: torch.Tensor, flip: torch.Tensor, size, cam_size):
    """``(Vy [B, H, h], Vx [B, W, w])``, float64, as :func:`sgc_fast.interp.warp_matrices`."""
    H, W = int(size[0]), int(size[1])
    h, w = int(cam_size[0]), int(cam_size[1])
    crop = crop.to(torch.int64).contiguous()
    flip = flip.contiguous()
    B = crop.shape[0]
    vy = torch.empty((B, H, h), dtype=torch.float64, device=crop.device)
    vx = torch.empty((B, W, w), dtype=torch.float64, device=crop.device)
    if B:
        with on_device(crop.device):
            _warp_kernel[(B, triton.cdiv(H * h, WARP_BLOCK))](crop, flip, vy, H, h, AXIS=0, FLIP=False,
                                                               BLOCK=WARP_BLOCK, num_warps=NUM_WARPS)
            _warp_kernel[(B, triton.cdiv(W * w, WARP_BLOCK))](crop, flip, vx, W, w, AXIS=1, FLIP=True,
                                                               BLOCK=WARP_BLOCK, num_warps=NUM_WARPS)
    return vy, vx


def lowres_stats(pb):
    """The unmasked problem's stats (:func:`sgc_fast.contrast.lowres_stats`); the products the backward needs go
    into ``pb.memo``."""
    from .. import contrast

    B, h, w = pb.ct_aug.shape
    if not fits(h, w):
        return contrast.lowres_stats(pb)
    N = pb.ct_neg.shape[0]
    NQ = N if N > 0 else B
    dev = pb.ct_aug.device
    f = lambda *s: torch.empty(s, dtype=torch.float64, device=dev)  # noqa: E731
    gram, pos, na, np_, nq = f(B, NQ), f(B), f(B), f(B), f(NQ)
    m, uv, vv, col, ay, ax, r = f(B + N, h, w), f(B, h, w), f(B, h, w), f(B, h, w), f(B, h, h), f(B, w, w), f(B + N)
    ca, co, cq = pb.ct_aug.contiguous(), pb.ct_orig.contiguous(), pb.ct_neg.contiguous()
    scal = scalars(dev, float(pb.eps), pb.eps * pb.eps * pb.H * pb.W)
    BH, BW = next_pow2(h, 2), next_pow2(w, 2)
    if B + N:
        with on_device(dev):
            _lowres_prep_kernel[(B + N,)](
                ca, co, cq, pb.uy.contiguous(), pb.ux.contiguous(), pb.vy.contiguous(), pb.vx.contiguous(),
                pb.my.contiguous(), pb.mx.contiguous(), pb.weight.contiguous(), scal, m, uv, vv, col, ay, ax, r, pos,
                na, np_, nq, B, h, w, pb.H, pb.W, WARPED=pb.vy.shape[0] > 1, BH=BH, BW=BW, num_warps=NUM_WARPS,
            )
            if B:
                cols, rc = (cq, r[B:]) if N else (ca, r)
                _lowres_gram_kernel[(B,)](m, cols, r, rc, na, scal, gram, nq, NQ, h * w, SEPARATE=N > 0,
                                          BLOCK=next_pow2(h * w, 2), num_warps=NUM_WARPS)
    pb.memo["triton_lowres"] = (m, uv, vv, col, ay, ax)
    return gram, pos, na, np_, nq


def lowres_grads(pb, coefs):
    """Gradients w.r.t. (ct_aug, ct_orig, ct_neg) of the unmasked problem (:func:`sgc_fast.contrast.lowres_grads`)."""
    from .. import contrast

    B, h, w = pb.ct_aug.shape
    if not fits(h, w):
        return contrast.lowres_grads(pb, coefs)
    if "triton_lowres" not in pb.memo:
        lowres_stats(pb)
    m, uv, vv, col, ay, ax = pb.memo["triton_lowres"]
    N = m.shape[0] - B
    dev = pb.ct_aug.device
    c_aa, c_aq, c_qa, c_qq, c_ap, c_pa, c_pp = (c.to(torch.float64).contiguous() for c in coefs)
    g_aug = torch.empty((B, h, w), dtype=torch.float64, device=dev)
    g_orig = torch.empty_like(g_aug)
    g_neg = torch.empty((N, h, w), dtype=torch.float64, device=dev)
    if 2 * B + N:
        with on_device(dev):
            _lowres_grads_kernel[(2 * B + N,)](
                pb.ct_aug.contiguous(), m, uv, vv, col, ay, ax, pb.weight.contiguous(),
                scalars(dev, float(pb.eps), pb.eps * pb.eps * pb.H * pb.W), c_aa, c_aq, c_qa, c_qq, c_ap, c_pa,
                c_pp, g_aug, g_orig, g_neg, B, N, h, w, BH=next_pow2(h, 2), BW=next_pow2(w, 2), num_warps=NUM_WARPS,
            )
    return g_aug, g_orig, g_neg
