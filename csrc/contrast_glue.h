// The float64 "glue" of contrast_logits around the sweep, per element, shared by the CPU and CUDA kernels of
// cpu/contrast_glue.cpp and cuda/contrast_glue.cu (host and device code). The formulas are those of
// sgc_fast/contrast.py (the plain-PyTorch glue, kept as the reference). What differs between the devices is how
// reductions are split (sequential on the CPU, fixed warp/block trees on the GPU) and that nvcc contracts
// a*b + c into fused multiply-adds: results agree to rounding, not bit for bit, and each device is
// reproducible run to run.
//
// Packed stats (float64, one buffer kept from forward to backward):
//   [ gram B*NQ | pos B | |a|^2 B | |p|^2 B | |q|^2 NQ ]
// NQ = B without separate negatives (q = a, the logits then skip the diagonal), else the number of negatives.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SGC_HD __host__ __device__ __forceinline__
#else
#define SGC_HD inline
#endif

namespace sgc_fast {
namespace glue {

constexpr double kNormEps = 1e-12;  // F.normalize's floor on the norm (sgc_fast.reference.NORM_EPS)

struct Stats {
  const double* gram;  // [B, NQ]
  const double* pos;   // [B]
  const double* na;    // [B]
  const double* np;    // [B]
  const double* nq;    // [NQ]
  int64_t B, NQ;
};

SGC_HD int64_t packed_numel(int64_t B, int64_t NQ) { return B * NQ + 3 * B + NQ; }

SGC_HD Stats unpack(const double* packed, int64_t B, int64_t NQ) {
  Stats s;
  s.gram = packed;
  s.pos = packed + B * NQ;
  s.na = s.pos + B;
  s.np = s.na + B;
  s.nq = s.np + B;
  s.B = B;
  s.NQ = NQ;
  return s;
}

// Norm from a squared norm, NaN kept (clamp_min semantics: NaN < x is false).
SGC_HD double norm_of(double sq) {
  return sqrt(sq < 0.0 ? 0.0 : sq);
}

// 1 / max(|v|, kNormEps): the L2 normalisation's scale.
SGC_HD double inv_norm(double sq) {
  const double n = norm_of(sq);
  return 1.0 / (n < kNormEps ? kNormEps : n);
}

// Whether the norm is above the floor (only then does the normalisation have a radial derivative).
SGC_HD bool above_floor(double sq) { return norm_of(sq) > kNormEps; }

// Without separate negatives: the Gram column of row i's negative number c (0-based, diagonal skipped), and
// back. With separate negatives both are the identity.
SGC_HD int64_t gram_col(int64_t i, int64_t c) { return c < i ? c : c + 1; }
SGC_HD int64_t neg_col(int64_t i, int64_t j) { return j < i ? j : j - 1; }

// Scale of Gram column j: of a_j without separate negatives, of q_j with them.
SGC_HD double col_scale(const Stats& s, int64_t j, bool separate) {
  return inv_norm(separate ? s.nq[j] : s.na[j]);
}

// Logit (i, c): c = 0 the positive cosine, c >= 1 the negative c - 1; -inf at row i's own column among
// separate negatives (self = -1: none). Divided by the temperature t.
SGC_HD double logit(const Stats& s, int64_t i, int64_t c, bool separate, int64_t self, double t) {
  const double sa = inv_norm(s.na[i]);
  if (c == 0) return s.pos[i] * sa * inv_norm(s.np[i]) / t;
  const int64_t j = separate ? c - 1 : gram_col(i, c - 1);
  if (separate && j == self) return -HUGE_VAL;
  return s.gram[i * s.NQ + j] * sa * col_scale(s, j, separate) / t;
}

// d loss / d cos(a_i, column j) (already divided by t) from the logits' gradient g ([B, ncols], row stride
// ncols); 0 on the diagonal (no separate negatives) and at row i's own column (separate negatives).
template <typename G>
SGC_HD double dcos(const G* g, int64_t ncols, int64_t i, int64_t j, bool separate, int64_t self, double t) {
  if (separate) return j == self ? 0.0 : static_cast<double>(g[i * ncols + 1 + j]) / t;
  if (j == i) return 0.0;
  return static_cast<double>(g[i * ncols + 1 + neg_col(i, j)]) / t;
}

// Coefficient of the off-diagonal a-a term without separate negatives: cos(a_i, a_j) appears in row i and
// in row j, so the derivative w.r.t. the pair is d_ij + d_ji.
template <typename G>
SGC_HD double coef_aa_offdiag(const Stats& s, const G* g, int64_t ncols, int64_t i, int64_t j, double t) {
  const double d = dcos(g, ncols, i, j, false, -1, t) + dcos(g, ncols, j, i, false, -1, t);
  return inv_norm(s.na[i]) * d * inv_norm(s.na[j]);
}

// Row i's contribution from column j to kappa_a (a_hat_i . d a_hat_i).
template <typename G>
SGC_HD double kappa_a_term(const Stats& s, const G* g, int64_t ncols, int64_t i, int64_t j, bool separate,
                           int64_t self, double t) {
  const double cos = s.gram[i * s.NQ + j] * inv_norm(s.na[i]) * col_scale(s, j, separate);
  double d = dcos(g, ncols, i, j, separate, self, t);
  if (!separate) d += dcos(g, ncols, j, i, false, -1, t);
  return d * cos;
}

// Per-row outputs once kappa_a_i (sum of kappa_a_term over j) is known: the diagonal of c_aa, c_ap (= c_pa)
// and c_pp.
// (Without separate negatives the diagonal is 0 - x, as in the PyTorch form, so that a zero is +0.0.)
template <typename G>
SGC_HD void row_coefs(const Stats& s, const G* g, int64_t ncols, int64_t i, double kappa_sum, double t,
                      bool separate, double* caa_ii, double* cap_i, double* cpp_i) {
  const double sa = inv_norm(s.na[i]), sp = inv_norm(s.np[i]);
  const double q = static_cast<double>(g[i * ncols]) / t;
  const double cos_pos = s.pos[i] * sa * sp;
  const double kappa = kappa_sum + q * cos_pos;
  const double x = above_floor(s.na[i]) ? kappa * sa * sa : 0.0;
  *caa_ii = separate ? -x : 0.0 - x;
  *cap_i = q * sa * sp;
  *cpp_i = above_floor(s.np[i]) ? -(q * cos_pos * sp * sp) : -0.0;
}

// Separate negatives: column k's contribution from row i to kappa_q (q_hat_k . d q_hat_k), and c_aq[i, k].
template <typename G>
SGC_HD double kappa_q_term(const Stats& s, const G* g, int64_t ncols, int64_t i, int64_t k, int64_t self, double t) {
  const double cos = s.gram[i * s.NQ + k] * inv_norm(s.na[i]) * inv_norm(s.nq[k]);
  return dcos(g, ncols, i, k, true, self, t) * cos;
}

template <typename G>
SGC_HD double coef_aq(const Stats& s, const G* g, int64_t ncols, int64_t i, int64_t k, int64_t self, double t) {
  return inv_norm(s.na[i]) * dcos(g, ncols, i, k, true, self, t) * inv_norm(s.nq[k]);
}

SGC_HD double coef_qq(const Stats& s, int64_t k, double kappa_q) {
  const double sq = inv_norm(s.nq[k]);
  return above_floor(s.nq[k]) ? -(kappa_q * sq * sq) : -0.0;
}

// ---- Unmasked problem in closed form on the h x w grid (sgc_fast/contrast.py: lowres_stats, lowres_grads) -------
// Matrices are row-major float64. The per-sample products are
//   Ay = Uy^T Vy_i [h,h], Ax = Ux^T Vx_i [w,w], Cy = Vy_i^T Vy_i, Cx = Vx_i^T Vx_i, colY = Vy_i^T 1, colX = Vx_i^T 1,
// and the maps m = My c Mx^T (My = Uy^T Uy), uv = Ay c_orig Ax^T, vv = Cy c_orig Cx^T, col = colY colX^T.

// (X^T Y)[a][b] = sum_r X[r][a] Y[r][b] for X [n, p], Y [n, q] (row strides p and q).
SGC_HD double gram_entry(const double* X, const double* Y, int64_t n, int64_t p, int64_t q, int64_t a, int64_t b) {
  double s = 0.0;
  for (int64_t r = 0; r < n; ++r) s += X[r * p + a] * Y[r * q + b];
  return s;
}

// Column sum of X [n, p]: (X^T 1)[a].
SGC_HD double col_sum(const double* X, int64_t n, int64_t p, int64_t a) {
  double s = 0.0;
  for (int64_t r = 0; r < n; ++r) s += X[r * p + a];
  return s;
}

// Left factor: (P c)[a][b] = sum_k P[a][k] c[k][b] for P [h,h] (transposed: P[k][a]), c [h,w].
SGC_HD double left_entry(const double* P, const double* c, int64_t h, int64_t w, int64_t a, int64_t b, bool trans) {
  double s = 0.0;
  for (int64_t k = 0; k < h; ++k) s += (trans ? P[k * h + a] : P[a * h + k]) * c[k * w + b];
  return s;
}

// Right factor: (t Q^T)[a][b] = sum_k t[a][k] Q[b][k] for t [h,w], Q [w,w] (transposed: Q[k][b]).
SGC_HD double right_entry(const double* t, const double* Q, int64_t w, int64_t a, int64_t b, bool trans) {
  double s = 0.0;
  for (int64_t k = 0; k < w; ++k) s += t[a * w + k] * (trans ? Q[k * w + b] : Q[b * w + k]);
  return s;
}

// ---- CGC warp matrices (sgc_fast/interp.py: warp_matrices) ---------------------------------------------------
// One axis of "upsample h -> n, crop rows start : start + length, resize back to n, flip": entry (r, y) of
// Vy (or Vx) for output row r and CAM index y. Source coordinates follow align_corners=False
// (src = (dst + 0.5) * in / out - 0.5, clamped below at 0, right neighbour clamped to the last index), in
// the order of operations of interp.py (equal to rounding: compilers may fuse its multiply-adds).

struct Taps {
  int64_t i0, i1;
  double lam;
};

// The two source taps of output row r when resizing in_size -> out_size; scale = in_size / out_size.
SGC_HD Taps resize_taps(int64_t r, double scale, int64_t in_size) {
  double src = (static_cast<double>(r) + 0.5) * scale - 0.5;
  src = src < 0.0 ? 0.0 : src;
  Taps t;
  t.i0 = static_cast<int64_t>(floor(src));
  t.i0 = t.i0 < in_size - 1 ? t.i0 : in_size - 1;
  t.i1 = t.i0 + 1 < in_size - 1 ? t.i0 + 1 : in_size - 1;
  t.lam = src - static_cast<double>(t.i0);
  return t;
}

// Entry (r, y) of the n x m upsampling matrix (accumulated as index_put_ does: first 1 - lam, then lam).
SGC_HD double upsample_entry(int64_t r, int64_t y, int64_t n, int64_t m) {
  const Taps t = resize_taps(r, static_cast<double>(m) / static_cast<double>(n), m);
  double v = 0.0;
  if (y == t.i0) v += 1.0 - t.lam;
  if (y == t.i1) v += t.lam;
  return v;
}

// Entry (r, y) of one axis' warp matrix [n, m] for a crop (start, length) of the upsampled axis. Reads no memory:
// a box outside the map (values are checked on CPU tensors, on GPU ones only with SGC_FAST_CHECK_VALUES=1)
// gives meaningless weights, never an out-of-bounds access.
SGC_HD double warp_entry(int64_t r, int64_t y, int64_t n, int64_t m, int64_t start, int64_t length) {
  const double len = static_cast<double>(length);
  double src = (static_cast<double>(r) + 0.5) * (len / static_cast<double>(n)) - 0.5;
  src = src < 0.0 ? 0.0 : src;
  const int64_t f = static_cast<int64_t>(floor(src));
  const int64_t i0 = f < length - 1 ? f : length - 1;
  const int64_t i1 = i0 + 1 < length - 1 ? i0 + 1 : length - 1;
  const double lam = src - static_cast<double>(i0);
  return (1.0 - lam) * upsample_entry(start + i0, y, n, m) + lam * upsample_entry(start + i1, y, n, m);
}

}  // namespace glue
}  // namespace sgc_fast
