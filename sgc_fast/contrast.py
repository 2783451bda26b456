"""Device-independent math of the fused ``contrast_logits``, shared by every fused backend.

The full-resolution vectors of :mod:`sgc_fast.reference` are linear in the *sum-normalised* CAMs
``ct = c / (w.c + eps)`` (``w = U^T 1``, so ``w.c`` is the sum of the upsampled map):

    a_i = mask_i . (U ct_aug_i + eps),   p_i = V_i ct_orig_i + eps,   q_k = neg_mask_k . (U ct_neg_k + eps)

with ``U = Uy (x) Ux`` the bilinear upsampling and ``V_i = Vy_i (x) Vx_i`` the upsampling composed with
sample i's crop/resize/flip (``V = U`` without a crop). Everything the logits need are the inner
products of these vectors (the *stats*): ``gram = a.q`` (``a.a`` without separate negatives),
``pos = a.p`` and the squared norms. A backend supplies them in one of two ways:

* **low resolution** (no mask): closed forms on the h x w grid, e.g.
  ``a_i.a_j = ct_i^T M ct_j + eps (w.ct_i + w.ct_j) + eps^2 H W`` with ``M = Uy^T Uy (x) Ux^T Ux``;
  never touches an H x W pixel (this module, float64);
* **sweep** (mask): a kernel that regenerates pixel tiles from the CAMs and accumulates the stats
  (``contrast_sweep``; the C++ and Triton backends each have one).

Backward: the gradient of the logits w.r.t. the normalised vectors, pushed through the L2
normalisations, is a *linear combination of the same vectors* (:func:`coefficients`):
``dA = C_aa A + C_aq Q + diag(c_ap) P``, ``dP = diag(c_pa) A + diag(c_pp) P``,
``dQ = C_qa A + diag(c_qq) Q``. Pulling these fields back through masks and upsampling gives the
gradient w.r.t. ``ct`` (again low-resolution or swept), and :func:`unnormalise_grad` finishes the
chain to the raw CAMs. The backward itself is not differentiable again.

The functions here are the plain-PyTorch form of this glue (the semantics, and what runs when nothing
faster is there). The fused backends run it through one of three interchangeable implementations
(:func:`sgc_fast.fused.glue`): ``native`` (the extension's ``sgc_fast::contrast_normalise``, ``contrast_epilogue``,
``contrast_coefficients``, ``contrast_unnormalise``, and for the unmasked problem ``warp_matrices``,
``contrast_lowres_stats``, ``contrast_lowres_grads``; csrc/contrast_glue.h), ``triton``
(:mod:`sgc_fast.triton.contrast_glue_kernel`, :mod:`sgc_fast.triton.contrast_lowres_kernel`: the same ops as
Triton kernels) or ``torch`` (:class:`TorchGlue`, this module) -- one or two launches each in place of ~100
(SGC) to ~200 (CGC) small ATen ops per forward + backward. ``SGC_FAST_GLUE`` = ``native``, ``triton`` or
``torch`` overrides the automatic choice (:func:`sgc_fast.fused.glue_kind`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .interp import cacheable, upsample_matrix, warp_matrices
from .reference import NORM_EPS

__all__ = [
    "Problem", "TorchGlue", "pack_stats", "unpack_stats",
    "prepare", "logits_from_stats", "coefficients", "lowres_stats", "lowres_grads", "unnormalise_grad",
]


@dataclass
class Problem:
    """Everything both passes need, in float64 unless noted (all tensors are tiny)."""

    ct_aug: torch.Tensor  # [B, h, w] in prepare's ct_dtype
    ct_orig: torch.Tensor  # [B, h, w] in prepare's ct_dtype
    ct_neg: torch.Tensor  # [N, h, w] in prepare's ct_dtype; N = 0 without separate negatives
    sum_aug: torch.Tensor  # [B]   w.c + eps of the raw CAMs (the normaliser)
    sum_orig: torch.Tensor
    sum_neg: torch.Tensor
    uy: torch.Tensor  # [H, h]
    ux: torch.Tensor  # [W, w]
    vy: torch.Tensor  # [B or 1, H, h]
    vx: torch.Tensor  # [B or 1, W, w]
    weight: torch.Tensor  # [h, w]  w = U^T 1
    my: torch.Tensor  # [h, h]  Uy^T Uy
    mx: torch.Tensor  # [w, w]  Ux^T Ux
    eps: float
    H: int
    W: int
    warped: bool = True  # V differs from U (a crop was given)
    #: Products the closed forms share between forward and backward (see :func:`_memo`).
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def B(self) -> int:
        return self.ct_aug.shape[0]

    @property
    def separate(self) -> bool:
        return self.ct_neg.shape[0] > 0


    def matrices(self, dtype: torch.dtype):
        """``(uy, ux, vy, vx)`` in ``dtype`` (the sweep kernels' inputs); without a crop the converted matrices
        come from a per-geometry cache instead of four conversions per call."""
        if dtype == torch.float64:
            return self.uy, self.ux, self.vy, self.vx
        h, w = self.ct_aug.shape[1:]
        if not self.warped and cacheable(self.H, self.W, h, w) and type(self.uy) is torch.Tensor:
            uy, ux = _constants_as(self.H, self.W, h, w, self.uy.device, dtype)
            return uy, ux, uy[None], ux[None]
        return self.uy.to(dtype), self.ux.to(dtype), self.vy.to(dtype), self.vx.to(dtype)


def pack_stats(stats) -> torch.Tensor:
    """The five stats as one float64 buffer ``[gram B*NQ | pos B | |a|^2 B | |p|^2 B | |q|^2 NQ]``."""
    return torch.cat([s.reshape(-1) for s in stats])


def unpack_stats(packed: torch.Tensor, B: int, NQ: int):
    gram, pos, na, np_, nq = packed.split([B * NQ, B, B, B, NQ])
    return gram.view(B, NQ), pos, na, np_, nq


class TorchGlue:
    """The glue as plain PyTorch ops (the functions of this module)."""

    @staticmethod
    def normalise(cam, weight, eps, dtype):
        """``(cam / total)`` in ``dtype`` and ``total = w.cam + eps`` (float64), per sample."""
        c = cam.to(torch.float64)
        s = (c * weight).sum((1, 2)) + eps
        return (c / s[:, None, None]).to(dtype), s

    @staticmethod
    def epilogue(stats, self_index, separate, temperature, dtype):
        """``(logits, packed stats)``."""
        return logits_from_stats(stats, separate, self_index, temperature, dtype), pack_stats(stats)

    @staticmethod
    def coefficients(packed, grad_logits, self_index, separate, temperature):
        """``(c_aa, c_aq, c_qa, c_qq, c_ap, c_pp)`` (c_pa = c_ap)."""
        B = grad_logits.shape[0]
        NQ = grad_logits.shape[1] - 1 if separate else B
        c_aa, c_aq, c_qa, c_qq, c_ap, _, c_pp = coefficients(unpack_stats(packed, B, NQ), separate, grad_logits,
                                                              self_index, temperature)
        return c_aa, c_aq, c_qa, c_qq, c_ap, c_pp

    @staticmethod
    def unnormalise(grad_ct, cam, total, weight):
        """d/d(cam) from d/d(ct), in cam's dtype."""
        return unnormalise_grad(grad_ct, cam, total, weight).to(cam.dtype)

    @staticmethod
    def warp_matrices(crop, flip, size, cam_size):
        """The CGC warp ``(Vy [B, H, h], Vx [B, W, w])``, float64 (:func:`sgc_fast.interp.warp_matrices`)."""
        return warp_matrices(crop, flip, size, cam_size, torch.float64)

    @staticmethod
    def lowres_stats(pb):
        """The unmasked problem's stats in closed form (:func:`lowres_stats`)."""
        return lowres_stats(pb)

    @staticmethod
    def lowres_grads(pb, coefs):
        """Its gradients w.r.t. the normalised CAMs (:func:`lowres_grads`)."""
        return lowres_grads(pb, coefs)


def prepare(cam_orig, cam_aug, neg_cam, crop, flip, size, eps, ct_dtype: torch.dtype = torch.float64,
            glue_impl=None) -> Problem:
    """Interpolation matrices (float64) and sum-normalised CAMs (in ``ct_dtype``: float64 for the closed
    forms, the sweep kernel's dtype for the sweep; the normaliser is computed in float64 either way), the
    normalisation done by ``glue_impl`` (default :class:`TorchGlue`)."""
    H, W = size[0], size[1]
    _, h, w = cam_aug.shape
    dev = cam_aug.device
    f64 = torch.float64
    if cacheable(H, W, h, w) and type(cam_aug) is torch.Tensor:
        uy, ux, weight, my, mx = _constants(H, W, h, w, dev)
    else:
        uy, ux, weight, my, mx = _constants.__wrapped__(H, W, h, w, dev)
    impl = glue_impl if glue_impl is not None and type(cam_aug) is torch.Tensor else TorchGlue
    if crop is not None:
        vy, vx = impl.warp_matrices(crop, flip, (H, W), (h, w))
    else:
        vy, vx = uy[None], ux[None]

    def normalise(c):
        return impl.normalise(c, weight, eps, ct_dtype)

    ct_aug, s_aug = normalise(cam_aug)
    ct_orig, s_orig = normalise(cam_orig)
    if neg_cam is None:
        ct_neg, s_neg = ct_aug.new_zeros((0, h, w)), ct_aug.new_zeros((0,), dtype=f64)
    else:
        ct_neg, s_neg = normalise(neg_cam)
    return Problem(ct_aug, ct_orig, ct_neg, s_aug, s_orig, s_neg, uy, ux, vy, vx, weight, my, mx, eps, H, W,
                   crop is not None)


@functools.lru_cache(maxsize=32)
def _constants(H: int, W: int, h: int, w: int, device: torch.device):
    """Float64 ``Uy, Ux``, ``w = U^T 1`` and ``Uy^T Uy, Ux^T Ux`` of one geometry (read-only)."""
    uy = upsample_matrix(H, h, torch.float64, device)
    ux = upsample_matrix(W, w, torch.float64, device)
    return uy, ux, torch.outer(uy.sum(0), ux.sum(0)), uy.T @ uy, ux.T @ ux


@functools.lru_cache(maxsize=32)
def _constants_as(H: int, W: int, h: int, w: int, device: torch.device, dtype: torch.dtype):
    """``Uy, Ux`` of one geometry converted to ``dtype`` (read-only)."""
    uy, ux = _constants(H, W, h, w, device)[:2]
    return uy.to(dtype), ux.to(dtype)


def _sep(my: torch.Tensor, c: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """``my @ c @ mx^T`` batched over c's first axis (my/mx may be batched too)."""
    return my @ c @ mx.transpose(-1, -2)


def _inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).flatten(1).sum(1)


def _memo(pb: Problem, key: str, compute):
    """``compute()`` once per problem: the forward's closed forms are reused by the backward."""
    if key not in pb.memo:
        pb.memo[key] = compute()
    return pb.memo[key]


def _uv(pb: Problem):
    """``(Uy^T Vy_i, Ux^T Vx_i)``, ``[B or 1, h, h]`` and ``[B or 1, w, w]``."""
    return _memo(pb, "uv", lambda: (pb.uy.T @ pb.vy, pb.ux.T @ pb.vx))


def _m_aug(pb: Problem) -> torch.Tensor:
    return _memo(pb, "m_aug", lambda: _sep(pb.my, pb.ct_aug, pb.mx))  # M ct_aug = U^T U ct_aug


def _m_neg(pb: Problem) -> torch.Tensor:
    return _memo(pb, "m_neg", lambda: _sep(pb.my, pb.ct_neg, pb.mx))


def _uv_orig(pb: Problem) -> torch.Tensor:
    def compute():
        uvy, uvx = _uv(pb)
        return _sep(uvy, pb.ct_orig, uvx)  # U^T V_i ct_orig_i

    return _memo(pb, "uv_orig", compute)


def _vv_orig(pb: Problem) -> torch.Tensor:
    # V_i^T V_i ct_orig_i
    return _memo(pb, "vv_orig", lambda: _sep(pb.vy.transpose(1, 2) @ pb.vy, pb.ct_orig, pb.vx.transpose(1, 2) @ pb.vx))


def lowres_stats(pb: Problem):
    """Stats of the unmasked problem in closed form on the h x w grid: (gram, pos, |a|^2, |p|^2, |q|^2)."""
    eps, HW = pb.eps, pb.H * pb.W
    r_aug = _inner(pb.ct_aug, pb.weight.expand_as(pb.ct_aug))
    m_aug = _m_aug(pb)
    cols, r_cols = (pb.ct_neg, _inner(pb.ct_neg, pb.weight.expand_as(pb.ct_neg))) if pb.separate else (pb.ct_aug, r_aug)
    gram = m_aug.flatten(1) @ cols.flatten(1).T + eps * (r_aug[:, None] + r_cols[None, :]) + eps * eps * HW
    # V_i ct_orig_i, its total rho_i, and the mixed products U^T V_i and V_i^T V_i.
    rho = _inner(pb.ct_orig, _col_sums(pb).expand_as(pb.ct_orig))
    uv = _uv_orig(pb)
    vv = _vv_orig(pb)
    pos = _inner(pb.ct_aug, uv) + eps * (r_aug + rho) + eps * eps * HW
    norm_aug = _inner(pb.ct_aug, m_aug) + 2 * eps * r_aug + eps * eps * HW
    norm_orig = _inner(pb.ct_orig, vv) + 2 * eps * rho + eps * eps * HW
    if pb.separate:
        norm_neg = _inner(pb.ct_neg, _m_neg(pb)) + 2 * eps * r_cols + eps * eps * HW
    else:
        norm_neg = norm_aug
    return gram, pos, norm_aug, norm_orig, norm_neg


def _col_sums(pb: Problem) -> torch.Tensor:
    """``V_i^T 1`` as ``[B or 1, h, w]``: how much each CAM cell contributes to the warped map's total."""
    return _memo(pb, "col_sums", lambda: pb.vy.sum(1)[:, :, None] * pb.vx.sum(1)[:, None, :])


def _scales(norm_sq: torch.Tensor):
    """Raw norms -> (1 / max(norm, 1e-12), whether the norm is above the floor)."""
    n = norm_sq.clamp_min(0).sqrt()
    return 1.0 / n.clamp_min(NORM_EPS), n > NORM_EPS


def logits_from_stats(stats, separate: bool, self_index, temperature: float, out_dtype: torch.dtype) -> torch.Tensor:
    """Cosines from the stats, laid out as the logits (see reference.contrast_logits), divided by T."""
    gram, pos, norm_aug, norm_orig, norm_neg = stats
    s_a, _ = _scales(norm_aug)
    s_p, _ = _scales(norm_orig)
    s_q, _ = _scales(norm_neg)
    cos = gram * s_a[:, None] * s_q[None, :]
    cos_pos = pos * s_a * s_p
    if not separate:
        neg = off_diagonal(cos)
    else:
        neg = cos
        if self_index is not None:
            neg = neg.masked_fill(_self_mask(neg, self_index), float("-inf"))
    return (torch.cat([cos_pos[:, None], neg], 1) / temperature).to(out_dtype)


def _off_diagonal_view(m: torch.Tensor) -> torch.Tensor:
    # After dropping the first element of a contiguous [B, B], the diagonal entries are the last column
    # of a [B-1, B+1] view; the first B columns are the off-diagonal entries in row-major order.
    B = m.shape[0]
    return m.reshape(-1)[1:].view(B - 1, B + 1)[:, :B]


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """``[B, B] -> [B, B-1]``: row i without its diagonal entry, in column order (no boolean indexing,
    hence no host synchronisation on a GPU)."""
    B = m.shape[0]
    return _off_diagonal_view(m.contiguous()).reshape(B, B - 1) if B > 1 else m[:, :0]


def scatter_off_diagonal(values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`off_diagonal`: ``[B, B-1] -> [B, B]`` with zeros on the diagonal."""
    B = values.shape[0]
    out = values.new_zeros(B, B)
    if B > 1:
        _off_diagonal_view(out).copy_(values.reshape(B - 1, B))
    return out


def _self_mask(neg: torch.Tensor, self_index: torch.Tensor) -> torch.Tensor:
    cols = torch.arange(neg.shape[1], device=neg.device)
    return cols[None, :] == self_index.to(neg.device)[:, None]


def coefficients(stats, separate: bool, grad_logits: torch.Tensor, self_index, temperature: float):
    """Coefficients of the pixel-space gradient fields (see the module docstring), float64.

    Returns (c_aa [B,B], c_aq [B,N], c_qa [N,B], c_qq [N], c_ap [B], c_pa [B], c_pp [B]).
    """
    gram, pos, norm_aug, norm_orig, norm_neg = stats
    g = grad_logits.to(torch.float64) / temperature
    B = gram.shape[0]
    s_a, on_a = _scales(norm_aug)
    s_p, on_p = _scales(norm_orig)
    s_q, on_q = _scales(norm_neg)
    cos = gram * s_a[:, None] * s_q[None, :]
    cos_pos = pos * s_a * s_p
    q = g[:, 0]  # d loss / d (a_hat . p_hat)
    z = gram.new_zeros(())
    if separate:
        d = g[:, 1:]
        if self_index is not None:
            d = d.masked_fill(_self_mask(d, self_index), 0.0)
        kappa_a = (d * cos).sum(1) + q * cos_pos  # a_hat . d(a_hat)
        kappa_q = (d * cos).sum(0)  # n_hat . d(n_hat)
        c_aq = s_a[:, None] * d * s_q[None, :]
        c_qa = c_aq.T.contiguous()
        c_qq = -torch.where(on_q, kappa_q * s_q * s_q, z)
        c_aa = torch.diag(-torch.where(on_a, kappa_a * s_a * s_a, z))
    else:
        # Place row i's negative columns at (i, j != i), symmetrise: a_hat_i . a_hat_j appears in rows i and j.
        d = scatter_off_diagonal(g[:, 1:])
        s = d + d.T
        kappa_a = (s * cos).sum(1) + q * cos_pos
        c_aa = s_a[:, None] * s * s_a[None, :] - torch.diag(torch.where(on_a, kappa_a * s_a * s_a, z))
        c_aq = g.new_zeros(B, 0)
        c_qa = g.new_zeros(0, B)
        c_qq = g.new_zeros(0)
    c_ap = q * s_a * s_p
    c_pa = c_ap
    c_pp = -torch.where(on_p, q * cos_pos * s_p * s_p, z)
    return c_aa, c_aq, c_qa, c_qq, c_ap, c_pa, c_pp


def lowres_grads(pb: Problem, coefs):
    """Gradients w.r.t. (ct_aug, ct_orig, ct_neg) of the unmasked problem, on the h x w grid."""
    c_aa, c_aq, c_qa, c_qq, c_ap, c_pa, c_pp = coefs
    eps = pb.eps
    w = pb.weight
    # U^T a_j = M ct_j + eps w ; U^T p_i = U^T V_i ct_orig_i + eps w ; V_i^T a_i, V_i^T p_i likewise (the products
    # the forward formed are reused when this is the forward's problem).
    ut_a = _m_aug(pb) + eps * w
    ut_p = _uv_orig(pb) + eps * w
    vt1 = _col_sums(pb)
    uvy, uvx = _uv(pb)
    vt_a = _sep(uvy.transpose(1, 2), pb.ct_aug, uvx.transpose(1, 2)) + eps * vt1  # V_i^T U = (U^T V_i)^T
    vt_p = _vv_orig(pb) + eps * vt1
    B, h, wd = pb.ct_aug.shape
    g_aug = (c_aa @ ut_a.flatten(1)).view(B, h, wd) + c_ap[:, None, None] * ut_p
    g_orig = c_pa[:, None, None] * vt_a + c_pp[:, None, None] * vt_p
    if pb.separate:
        ut_q = _m_neg(pb) + eps * w
        g_aug = g_aug + (c_aq @ ut_q.flatten(1)).view(B, h, wd)
        g_neg = (c_qa @ ut_a.flatten(1)).view(-1, h, wd) + c_qq[:, None, None] * ut_q
    else:
        g_neg = pb.ct_neg
    return g_aug, g_orig, g_neg


def unnormalise_grad(grad_ct: torch.Tensor, cam: torch.Tensor, total: torch.Tensor, weight: torch.Tensor):
    """Chain d/d(ct) to d/d(cam) for ``ct = cam / total``, ``total = w.cam + eps``."""
    cam = cam.to(torch.float64)
    inner = _inner(grad_ct, cam) / (total * total)
    return grad_ct / total[:, None, None] - inner[:, None, None] * weight

