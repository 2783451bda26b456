// contrast_sweep on the CPU: the per-pixel (SGC, masked) part of contrast_logits, forward and backward.
//
// Inputs are the sum-normalised CAMs  ct = c / (sum(U c) + eps)  ([B,h,w], [N,h,w]), so that the
// full-resolution vectors are, pixel by pixel,
//   a_i = mask_i * (Uy ct_aug_i Ux^T + eps)          (augmented view, masked)
//   p_i =          Vy_i ct_orig_i Vx_i^T + eps        (original view, optionally warped)
//   q_k = neg_mask_k * (Uy ct_neg_k Ux^T + eps)      (separate negatives; none: q = a)
// Forward returns, in float64, gram [B, Nq] (a_i.q_k; a_i.a_j without separate negatives), pos [B]
// (a_i.p_i), and the squared norms of a, p and q. Backward takes coefficient matrices and returns the
// gradients w.r.t. the three ct inputs of the fields
//   dA = coef_aa A + coef_aq Q + diag(coef_ap) P,  dP = diag(coef_pa) A + diag(coef_pp) P,
//   dQ = coef_qa A + diag(coef_qq) Q,
// i.e. ct_aug gets Uy^T (mask . dA) Ux and so on (sgc_fast/contrast.py derives the coefficients).
//
// Tiling: the H rows are split into kNumGroups fixed groups; a task takes whole groups and walks them
// kTileRows rows at a time, regenerating the tile of every map from the h x w CAMs through the sparse
// taps of the interpolation matrices (2 taps for a plain upsampling, <= 4 after a crop). No H x W map is
// ever stored: extra memory is O(kNumGroups * (B*Nq + B*h*w) + threads * B * kTileRows * W).
// Partial sums are kept per group and added in group order, and every dot product uses kLanes fixed
// lanes, so results are identical run to run and for any thread count.
// Backward recomputes the tiles and applies the adjoint of the upsampling as a gather into the h x w
// grid (rows first, then the per-row taps), again per group.
// Work: B*(Nq + 3)*H*W multiply-adds forward, about twice that backward; memory traffic is the mask.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "op_checks.h"

#include <algorithm>
#include <utility>
#include <cstring>
#include <vector>

namespace sgc_fast {
namespace {

constexpr int64_t kNumGroups = 16;  // fixed row groups: the reduction order never depends on threads
constexpr int64_t kTileRows = 4;    // rows regenerated per step
constexpr int kLanes = 16;          // independent accumulators of a dot product (vectorisable)

// Dot product with a fixed lane split: deterministic and vectorisable without -ffast-math.
template <typename T>
inline double dot(const T* x, const T* y, int64_t n) {
  T lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += x[i + l] * y[i + l];
  double s = 0;
  for (; i < n; ++i) s += static_cast<double>(x[i] * y[i]);
  for (int l = 0; l < kLanes; ++l) s += static_cast<double>(lane[l]);
  return s;
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Register-tiled products on GCC/Clang vector types (32 bytes: AVX where the build targets it, two SSE
// halves otherwise). Unaligned loads go through memcpy.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int n = 32 / sizeof(T);
  static type load(const T* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, type v) { std::memcpy(p, &v, sizeof(v)); }
  static type splat(T x) { return type{} + x; }
};

constexpr int kRowBlock = 4;  // output rows (and Gram columns) per register tile
constexpr int kPixVecs = 4;   // vectors of pixels per register tile in combine_rows

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// out[r * ld + c] += sum_n x_r[n] y_c[n] for a kRowBlock x kRowBlock block of rows (fixed lane order).
template <typename T>
inline void gram_block(const T* const* x, const T* const* y, int64_t n, double* out, int64_t ld) {
  using V = Vec<T>;
  typename V::type acc[kRowBlock][kRowBlock] = {};
  int64_t k = 0;
  for (; k + V::n <= n; k += V::n) {
    typename V::type xv[kRowBlock], yv[kRowBlock];
#pragma GCC unroll 4
    for (int r = 0; r < kRowBlock; ++r) {
      xv[r] = V::load(x[r] + k);
      yv[r] = V::load(y[r] + k);
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRowBlock; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < kRowBlock; ++c) acc[r][c] += xv[r] * yv[c];
  }
  for (int r = 0; r < kRowBlock; ++r)
    for (int c = 0; c < kRowBlock; ++c) {
      double s = 0;
      for (int64_t t = k; t < n; ++t) s += static_cast<double>(x[r][t] * y[c][t]);
      for (int l = 0; l < V::n; ++l) s += static_cast<double>(acc[r][c][l]);
      out[r * ld + c] += s;
    }
}

// out_r[n] = sum_j coef[r * ldc + j] src_j[n] for kRowBlock output rows, j < J (each src_j of length n).
template <typename T>
inline void combine_rows(const T* coef, int64_t ldc, const T* const* src, int64_t J, int64_t n, T* const* out) {
  using V = Vec<T>;
  constexpr int P = kPixVecs * V::n;
  int64_t k = 0;
  for (; k + P <= n; k += P) {
    typename V::type acc[kRowBlock][kPixVecs] = {};
    for (int64_t j = 0; j < J; ++j) {
      typename V::type sv[kPixVecs];
#pragma GCC unroll 4
      for (int v = 0; v < kPixVecs; ++v) sv[v] = V::load(src[j] + k + v * V::n);
#pragma GCC unroll 4
      for (int r = 0; r < kRowBlock; ++r) {
        const typename V::type c = V::splat(coef[r * ldc + j]);
#pragma GCC unroll 4
        for (int v = 0; v < kPixVecs; ++v) acc[r][v] += c * sv[v];
      }
    }
    for (int r = 0; r < kRowBlock; ++r)
      for (int v = 0; v < kPixVecs; ++v) V::store(out[r] + k + v * V::n, acc[r][v]);
  }
  for (; k < n; ++k)
    for (int r = 0; r < kRowBlock; ++r) {
      T a = 0;
      for (int64_t j = 0; j < J; ++j) a += coef[r * ldc + j] * src[j][k];
      out[r][k] = a;
    }
}

// One interpolation matrix [out, in] stored by rows as (first column, `len` weights).
template <typename T>
struct Taps {
  int64_t len = 0;
  std::vector<int64_t> start;
  std::vector<T> weight;  // [out * len]
};

template <typename T>
Taps<T> make_taps(const double* m, int64_t out, int64_t in) {
  Taps<T> t;
  std::vector<int64_t> lo(out), hi(out);
  for (int64_t r = 0; r < out; ++r) {
    int64_t a = in, b = -1;
    for (int64_t c = 0; c < in; ++c)
      if (m[r * in + c] != 0.0) {
        a = std::min(a, c);
        b = std::max(b, c);
      }
    if (b < 0) a = b = 0;  // an all-zero row: one zero tap
    lo[r] = a;
    hi[r] = b;
    t.len = std::max(t.len, b - a + 1);
  }
  t.start.resize(out);
  t.weight.assign(out * t.len, T(0));
  for (int64_t r = 0; r < out; ++r) {
    const int64_t s = std::min(lo[r], in - t.len);  // keep the window inside [0, in)
    t.start[r] = s;
    for (int64_t l = 0; l < t.len; ++l) t.weight[r * t.len + l] = static_cast<T>(m[r * in + s + l]);
  }
  return t;
}

// Taps of each [out, in] matrix of a [n, out, in] stack.
template <typename T>
std::vector<Taps<T>> make_taps_stack(const at::Tensor& mats) {
  at::Tensor m = mats.to(at::kDouble).contiguous();
  const int64_t n = m.size(0), out = m.size(1), in = m.size(2);
  std::vector<Taps<T>> taps;
  for (int64_t i = 0; i < n; ++i) taps.push_back(make_taps<T>(m.const_data_ptr<double>() + i * out * in, out, in));
  return taps;
}

struct MaskView {
  const uint8_t* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  const uint8_t* row(int64_t i, int64_t y) const { return data + i * s0 + y * s1; }
};

MaskView make_mask_view(const at::Tensor& mask) {
  MaskView v;
  if (mask.numel() == 0) return v;
  v.data = mask.const_data_ptr<uint8_t>();
  v.s0 = mask.stride(0);
  v.s1 = mask.stride(1);
  v.s2 = mask.stride(2);
  return v;
}

// Everything a task needs to regenerate map tiles. Upsampling is separable, so each CAM is first
// interpolated along x once per call (cx = ct Tx^T, [h, W] per sample: O(B h W) memory, h/H of a map);
// a map row is then a `len`-term combination of cx rows, vectorised over the W pixels.
template <typename T>
struct Geometry {
  int64_t B, Nq, h, w, H, W;
  Taps<T> uy, ux;
  std::vector<Taps<T>> vy, vx;  // one per sample, or a single shared one
  std::vector<T> cx_aug, cx_orig, cx_neg;  // [B|N, h, W]
  MaskView mask, neg_mask;
  T eps;

  const Taps<T>& vy_of(int64_t i) const { return vy[vy.size() == 1 ? 0 : i]; }
  const Taps<T>& vx_of(int64_t i) const { return vx[vx.size() == 1 ? 0 : i]; }
};

// cx[s, X] = sum_l tx.weight[X, l] cam[s, tx.start[X] + l]  for one [h, w] CAM.
template <typename T>
void interpolate_columns(const T* cam, const Taps<T>& tx, int64_t h, int64_t w, int64_t W, T* cx) {
  for (int64_t s = 0; s < h; ++s)
    for (int64_t X = 0; X < W; ++X) {
      const T* wx = tx.weight.data() + X * tx.len;
      const T* c = cam + s * w + tx.start[X];
      T v = T(0);
      for (int64_t l = 0; l < tx.len; ++l) v += wx[l] * c[l];
      cx[s * W + X] = v;
    }
}

// Adjoint of interpolate_columns for CAM rows [s0, s1), accumulated in double:
// grid[s, x] += sum_X tx[X, x] dcx[s, X].
template <typename T>
void adjoint_columns(const T* dcx, const Taps<T>& tx, int64_t s0, int64_t s1, int64_t W, int64_t w, double* grid) {
  for (int64_t s = s0; s < s1; ++s)
    for (int64_t X = 0; X < W; ++X) {
      const double d = static_cast<double>(dcx[s * W + X]);
      const T* wx = tx.weight.data() + X * tx.len;
      double* g = grid + s * w + tx.start[X];
      for (int64_t l = 0; l < tx.len; ++l) g[l] += static_cast<double>(wx[l]) * d;
    }
}

// The CAM rows [first, last + 1) that output rows [y0, y1) of `ty` read.
template <typename T>
std::pair<int64_t, int64_t> source_rows(const Taps<T>& ty, int64_t y0, int64_t y1) {
  int64_t lo = ty.start[y0], hi = ty.start[y0];
  for (int64_t Y = y0; Y < y1; ++Y) {
    lo = std::min(lo, ty.start[Y]);
    hi = std::max(hi, ty.start[Y] + ty.len);
  }
  return {lo, hi};
}

// Rows [y0, y0 + nr) of  mask . (Ty cx + eps)  into out[nr * W]; `mask` may have no data.
template <typename T>
void generate(const T* cx, const Taps<T>& ty, int64_t W, int64_t y0, int64_t nr, T eps, const MaskView& mask,
              int64_t sample, T* out) {
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t Y = y0 + r;
    T* o = out + r * W;
    for (int64_t X = 0; X < W; ++X) o[X] = eps;
    for (int64_t l = 0; l < ty.len; ++l) axpy(ty.weight[Y * ty.len + l], cx + (ty.start[Y] + l) * W, o, W);
    if (mask.data != nullptr) {
      const uint8_t* m = mask.row(sample, Y);
      if (mask.s2 == 1) {
        for (int64_t X = 0; X < W; ++X) o[X] = m[X] ? o[X] : T(0);
      } else {
        for (int64_t X = 0; X < W; ++X) o[X] = m[X * mask.s2] ? o[X] : T(0);
      }
    }
  }
}

// Adjoint of generate's row interpolation for rows [y0, y0 + nr): dcx[s] += Ty[Y, s] d[Y].
template <typename T>
void gather_rows(const T* d, const Taps<T>& ty, int64_t W, int64_t y0, int64_t nr, T* dcx) {
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t Y = y0 + r;
    for (int64_t l = 0; l < ty.len; ++l) axpy(ty.weight[Y * ty.len + l], d + r * W, dcx + (ty.start[Y] + l) * W, W);
  }
}

// Per-task scratch: the map tiles of one step, and (backward) the x-interpolated gradient rows.
// Rows are padded to a multiple of kRowBlock with zeros so that the blocked products need no edge cases.
template <typename T>
struct Tiles {
  std::vector<T> a, p, q, d;
  std::vector<T> dcx_aug, dcx_orig, dcx_neg;  // backward: [B|N, h, W] per group
  int64_t tile;
  Tiles(const Geometry<T>& g, bool backward) : tile(kTileRows * g.W) {
    a.assign(round_up(g.B, kRowBlock) * tile, T(0));
    p.resize(g.B * tile);
    q.assign(round_up(g.Nq, kRowBlock) * tile, T(0));
    d.assign(kRowBlock * tile, T(0));
    if (backward) {
      dcx_aug.assign(g.B * g.h * g.W, T(0));
      dcx_orig.assign(g.B * g.h * g.W, T(0));
      dcx_neg.assign(g.Nq * g.h * g.W, T(0));
    }
  }
  const T* a_row(int64_t i) const { return a.data() + i * tile; }
  const T* q_row(int64_t k) const { return q.data() + k * tile; }
};

template <typename T>
void fill_tiles(const Geometry<T>& g, Tiles<T>& t, int64_t y0, int64_t nr) {
  const int64_t hW = g.h * g.W;
  const MaskView none;
  for (int64_t i = 0; i < g.B; ++i) {
    generate(g.cx_aug.data() + i * hW, g.uy, g.W, y0, nr, g.eps, g.mask, i, t.a.data() + i * t.tile);
    generate(g.cx_orig.data() + i * hW, g.vy_of(i), g.W, y0, nr, g.eps, none, i, t.p.data() + i * t.tile);
  }
  for (int64_t k = 0; k < g.Nq; ++k)
    generate(g.cx_neg.data() + k * hW, g.uy, g.W, y0, nr, g.eps, g.neg_mask, k, t.q.data() + k * t.tile);
}

// Calls body(group, y0, nr, tiles) for every tile and group_end(group, tiles) after each group; tasks own
// whole groups.
template <typename T, typename Body, typename GroupEnd>
void for_each_tile(const Geometry<T>& g, int64_t groups, bool backward, Body body, GroupEnd group_end) {
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    Tiles<T> tiles(g, backward);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t ybeg = grp * g.H / groups, yend = (grp + 1) * g.H / groups;
      for (int64_t y0 = ybeg; y0 < yend; y0 += kTileRows) {
        const int64_t nr = std::min(kTileRows, yend - y0);
        fill_tiles(g, tiles, y0, nr);
        body(grp, y0, nr, tiles);
      }
      group_end(grp, tiles);
    }
  });
}

template <typename T>
Geometry<T> make_geometry(const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& mask,
                          const at::Tensor& uy, const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx,
                          const at::Tensor& neg_cam, const at::Tensor& neg_mask, double eps) {
  Geometry<T> g;
  g.B = cam_aug.size(0);
  g.h = cam_aug.size(1);
  g.w = cam_aug.size(2);
  g.H = uy.size(0);
  g.W = ux.size(0);
  g.Nq = neg_cam.size(0);
  g.uy = make_taps_stack<T>(uy.unsqueeze(0))[0];
  g.ux = make_taps_stack<T>(ux.unsqueeze(0))[0];
  g.vy = make_taps_stack<T>(vy);
  g.vx = make_taps_stack<T>(vx);
  const int64_t hw = g.h * g.w, hW = g.h * g.W;
  g.cx_aug.resize(g.B * hW);
  g.cx_orig.resize(g.B * hW);
  g.cx_neg.resize(g.Nq * hW);
  const T* ca = cam_aug.const_data_ptr<T>();
  const T* co = cam_orig.const_data_ptr<T>();
  const T* cq = g.Nq > 0 ? neg_cam.const_data_ptr<T>() : nullptr;
  at::parallel_for(0, 2 * g.B + g.Nq, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (i < g.B) {
        interpolate_columns(ca + i * hw, g.ux, g.h, g.w, g.W, g.cx_aug.data() + i * hW);
      } else if (i < 2 * g.B) {
        const int64_t b = i - g.B;
        interpolate_columns(co + b * hw, g.vx_of(b), g.h, g.w, g.W, g.cx_orig.data() + b * hW);
      } else {
        const int64_t k = i - 2 * g.B;
        interpolate_columns(cq + k * hw, g.ux, g.h, g.w, g.W, g.cx_neg.data() + k * hW);
      }
    }
  });
  g.mask = make_mask_view(mask);
  g.neg_mask = make_mask_view(neg_mask);
  g.eps = static_cast<T>(eps);
  return g;
}

template <typename T>
void sweep_forward(const Geometry<T>& g, double* gram, double* pos, double* norm_aug, double* norm_orig,
                   double* norm_neg) {
  const int64_t B = g.B, Nq = g.Nq, NQ = Nq > 0 ? Nq : B;
  const int64_t groups = std::min(kNumGroups, g.H);
  // Per-group partial sums: gram, pos, |a|^2, |p|^2, |q|^2.
  const int64_t S = B * NQ + 3 * B + Nq;
  std::vector<double> part(groups * S, 0.0);
  const int64_t Bp = round_up(B, kRowBlock), Nqp = round_up(Nq, kRowBlock);
  for_each_tile(g, groups, false, [&](int64_t grp, int64_t, int64_t nr, Tiles<T>& t) {
    double* acc = part.data() + grp * S;
    double *pg = acc, *pp = acc + B * NQ, *pa = pp + B, *po = pa + B, *pq = po + B;
    const int64_t n = nr * g.W;
    for (int64_t i = 0; i < B; ++i) {
      const T* ai = t.a_row(i);
      const T* pi = t.p.data() + i * t.tile;
      pp[i] += dot(ai, pi, n);
      pa[i] += dot(ai, ai, n);
      po[i] += dot(pi, pi, n);
    }
    for (int64_t k = 0; k < Nq; ++k) pq[k] += dot(t.q_row(k), t.q_row(k), n);
    // Gram in kRowBlock x kRowBlock blocks: the upper triangle of a.a, or all of a.q.
    double blk[kRowBlock * kRowBlock];
    for (int64_t ib = 0; ib < Bp; ib += kRowBlock) {
      const T* x[kRowBlock];
      for (int r = 0; r < kRowBlock; ++r) x[r] = t.a_row(ib + r);
      const int64_t cols = Nq == 0 ? Bp : Nqp;
      for (int64_t jb = Nq == 0 ? ib : 0; jb < cols; jb += kRowBlock) {
        const T* y[kRowBlock];
        for (int c = 0; c < kRowBlock; ++c) y[c] = Nq == 0 ? t.a_row(jb + c) : t.q_row(jb + c);
        std::fill(blk, blk + kRowBlock * kRowBlock, 0.0);
        gram_block(x, y, n, blk, kRowBlock);
        for (int r = 0; r < kRowBlock && ib + r < B; ++r)
          for (int c = 0; c < kRowBlock && jb + c < NQ; ++c)
            if (Nq > 0 || jb + c > ib + r) pg[(ib + r) * NQ + jb + c] += blk[r * kRowBlock + c];
      }
    }
  }, [](int64_t, Tiles<T>&) {});
  std::vector<double> total(S, 0.0);
  for (int64_t grp = 0; grp < groups; ++grp)
    for (int64_t s = 0; s < S; ++s) total[s] += part[grp * S + s];
  const double *tg = total.data(), *tp = tg + B * NQ, *ta = tp + B, *to = ta + B, *tq = to + B;
  for (int64_t i = 0; i < B; ++i) {
    pos[i] = tp[i];
    norm_aug[i] = ta[i];
    norm_orig[i] = to[i];
  }
  if (Nq == 0) {
    for (int64_t i = 0; i < B; ++i) {
      gram[i * B + i] = ta[i];
      norm_neg[i] = ta[i];
      for (int64_t j = i + 1; j < B; ++j) gram[i * B + j] = gram[j * B + i] = tg[i * B + j];
    }
  } else {
    std::copy(tg, tg + B * Nq, gram);
    std::copy(tq, tq + Nq, norm_neg);
  }
}

template <typename T>
void sweep_backward(const Geometry<T>& g, const at::Tensor& coef_aa, const at::Tensor& coef_aq,
                    const at::Tensor& coef_qa, const at::Tensor& coef_qq, const at::Tensor& coef_ap,
                    const at::Tensor& coef_pa, const at::Tensor& coef_pp, double* grad_aug, double* grad_orig,
                    double* grad_neg) {
  const int64_t B = g.B, Nq = g.Nq, hw = g.h * g.w;
  auto as_vec = [](const at::Tensor& t) {
    at::Tensor c = t.to(at::kDouble).contiguous();
    std::vector<T> v(c.numel());
    const double* p = c.const_data_ptr<double>();
    for (int64_t i = 0; i < c.numel(); ++i) v[i] = static_cast<T>(p[i]);
    return v;
  };
  const int64_t Bp = round_up(B, kRowBlock), Nqp = round_up(Nq, kRowBlock), J = B + Nq;
  // Rows of [coef_aa | coef_aq] (zero-padded to Bp rows) act on the sources [a_0..a_B-1, q_0..q_N-1];
  // rows of coef_qa (padded to Nqp) act on the a's.
  std::vector<T> c_a(Bp * J, T(0)), c_q(Nqp * B, T(0));
  {
    const std::vector<T> caa = as_vec(coef_aa), caq = as_vec(coef_aq), cqa = as_vec(coef_qa);
    for (int64_t i = 0; i < B; ++i) {
      for (int64_t j = 0; j < B; ++j) c_a[i * J + j] = caa[i * B + j];
      for (int64_t k = 0; k < Nq; ++k) c_a[i * J + B + k] = caq[i * Nq + k];
    }
    std::copy(cqa.begin(), cqa.end(), c_q.begin());
  }
  const std::vector<T> cqq = as_vec(coef_qq), cap = as_vec(coef_ap), cpa = as_vec(coef_pa), cpp = as_vec(coef_pp);
  const int64_t groups = std::min(kNumGroups, g.H);
  const int64_t S = (2 * B + Nq) * hw;  // per-group partial grids: aug, orig, neg
  std::vector<double> part(groups * S, 0.0);
  const int64_t hW = g.h * g.W;
  auto body = [&](int64_t, int64_t y0, int64_t nr, Tiles<T>& t) {
    const int64_t n = nr * g.W;
    std::vector<const T*> src(J);
    for (int64_t j = 0; j < B; ++j) src[j] = t.a_row(j);
    for (int64_t k = 0; k < Nq; ++k) src[B + k] = t.q_row(k);
    T* out[kRowBlock];
    for (int r = 0; r < kRowBlock; ++r) out[r] = t.d.data() + r * t.tile;
    auto apply_mask = [&](T* d, const MaskView& mv, int64_t row) {
      if (mv.data == nullptr) return;
      for (int64_t r = 0; r < nr; ++r) {
        const uint8_t* m = mv.row(row, y0 + r);
        T* dr = d + r * g.W;
        if (mv.s2 == 1) {
          for (int64_t X = 0; X < g.W; ++X) dr[X] = m[X] ? dr[X] : T(0);
        } else {
          for (int64_t X = 0; X < g.W; ++X) dr[X] = m[X * mv.s2] ? dr[X] : T(0);
        }
      }
    };
    // dA_i = sum_j coef_aa[i,j] a_j + sum_k coef_aq[i,k] q_k + coef_ap[i] p_i, masked, pulled back through Uy.
    for (int64_t ib = 0; ib < Bp; ib += kRowBlock) {
      combine_rows(c_a.data() + ib * J, J, src.data(), J, n, out);
      for (int r = 0; r < kRowBlock && ib + r < B; ++r) {
        const int64_t i = ib + r;
        axpy(cap[i], t.p.data() + i * t.tile, out[r], n);
        apply_mask(out[r], g.mask, i);
        gather_rows(out[r], g.uy, g.W, y0, nr, t.dcx_aug.data() + i * hW);
      }
    }
    // dP_i = coef_pa[i] a_i + coef_pp[i] p_i through the (warped) upsampling of the original view.
    T* d = out[0];
    for (int64_t i = 0; i < B; ++i) {
      const T* ai = t.a_row(i);
      const T* pi = t.p.data() + i * t.tile;
      for (int64_t k = 0; k < n; ++k) d[k] = cpa[i] * ai[k] + cpp[i] * pi[k];
      gather_rows(d, g.vy_of(i), g.W, y0, nr, t.dcx_orig.data() + i * hW);
    }
    // dQ_k = sum_i coef_qa[k,i] a_i + coef_qq[k] q_k, masked, pulled back through Uy.
    for (int64_t kb = 0; kb < Nqp; kb += kRowBlock) {
      combine_rows(c_q.data() + kb * B, B, src.data(), B, n, out);
      for (int r = 0; r < kRowBlock && kb + r < Nq; ++r) {
        const int64_t k = kb + r;
        axpy(cqq[k], t.q_row(k), out[r], n);
        apply_mask(out[r], g.neg_mask, k);
        gather_rows(out[r], g.uy, g.W, y0, nr, t.dcx_neg.data() + k * hW);
      }
    }
  };
  // After a group: pull the x-interpolated rows it touched back to the h x w grid (in double), reset them.
  auto group_end = [&](int64_t grp, Tiles<T>& t) {
    double* ga = part.data() + grp * S;
    double* go = ga + B * hw;
    double* gq = go + B * hw;
    const int64_t ybeg = grp * g.H / groups, yend = (grp + 1) * g.H / groups;
    auto finish = [&](T* dcx, const Taps<T>& ty, const Taps<T>& tx, double* grid) {
      const auto [s0, s1] = source_rows(ty, ybeg, yend);
      adjoint_columns(dcx, tx, s0, s1, g.W, g.w, grid);
      std::fill(dcx + s0 * g.W, dcx + s1 * g.W, T(0));
    };
    for (int64_t i = 0; i < B; ++i) {
      finish(t.dcx_aug.data() + i * hW, g.uy, g.ux, ga + i * hw);
      finish(t.dcx_orig.data() + i * hW, g.vy_of(i), g.vx_of(i), go + i * hw);
    }
    for (int64_t k = 0; k < Nq; ++k) finish(t.dcx_neg.data() + k * hW, g.uy, g.ux, gq + k * hw);
  };
  for_each_tile(g, groups, true, body, group_end);
  std::fill(grad_aug, grad_aug + B * hw, 0.0);
  std::fill(grad_orig, grad_orig + B * hw, 0.0);
  std::fill(grad_neg, grad_neg + Nq * hw, 0.0);
  for (int64_t grp = 0; grp < groups; ++grp) {
    const double* src = part.data() + grp * S;
    for (int64_t s = 0; s < B * hw; ++s) grad_aug[s] += src[s];
    for (int64_t s = 0; s < B * hw; ++s) grad_orig[s] += src[B * hw + s];
    for (int64_t s = 0; s < Nq * hw; ++s) grad_neg[s] += src[2 * B * hw + s];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_sweep_cpu(
    const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& mask, const at::Tensor& uy,
    const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx, const at::Tensor& neg_cam,
    const at::Tensor& neg_mask, double eps) {
  check_sweep_inputs(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask);
  const at::Tensor ca = cam_aug.contiguous(), co = cam_orig.contiguous(), cq = neg_cam.contiguous();
  const int64_t B = ca.size(0), Nq = cq.size(0), NQ = Nq > 0 ? Nq : B;
  auto opts = ca.options().dtype(at::kDouble);
  at::Tensor gram = at::empty({B, NQ}, opts), pos = at::empty({B}, opts), na = at::empty({B}, opts),
             np = at::empty({B}, opts), nq = at::empty({NQ}, opts);
  AT_DISPATCH_FLOATING_TYPES(ca.scalar_type(), "contrast_sweep_cpu", [&] {
    const auto g = make_geometry<scalar_t>(ca, co, mask, uy, ux, vy, vx, cq, neg_mask, eps);
    sweep_forward<scalar_t>(g, gram.mutable_data_ptr<double>(), pos.mutable_data_ptr<double>(),
                            na.mutable_data_ptr<double>(), np.mutable_data_ptr<double>(),
                            nq.mutable_data_ptr<double>());
  });
  return {gram, pos, na, np, nq};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrast_sweep_backward_cpu(
    const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& mask, const at::Tensor& uy,
    const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx, const at::Tensor& neg_cam,
    const at::Tensor& neg_mask, double eps, const at::Tensor& coef_aa, const at::Tensor& coef_aq,
    const at::Tensor& coef_qa, const at::Tensor& coef_qq, const at::Tensor& coef_ap, const at::Tensor& coef_pa,
    const at::Tensor& coef_pp) {
  check_sweep_inputs(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask);
  const at::Tensor ca = cam_aug.contiguous(), co = cam_orig.contiguous(), cq = neg_cam.contiguous();
  const int64_t B = ca.size(0), Nq = cq.size(0);
  TORCH_CHECK(coef_aa.numel() == B * B && coef_aq.numel() == B * Nq && coef_qa.numel() == Nq * B &&
                  coef_qq.numel() == Nq && coef_ap.numel() == B && coef_pa.numel() == B && coef_pp.numel() == B,
              "contrast_sweep_backward: coefficient shapes do not match B=", B, ", N=", Nq);
  auto opts = ca.options().dtype(at::kDouble);
  at::Tensor ga = at::empty(ca.sizes(), opts), go = at::empty(ca.sizes(), opts), gq = at::empty(cq.sizes(), opts);
  AT_DISPATCH_FLOATING_TYPES(ca.scalar_type(), "contrast_sweep_backward_cpu", [&] {
    const auto g = make_geometry<scalar_t>(ca, co, mask, uy, ux, vy, vx, cq, neg_mask, eps);
    sweep_backward<scalar_t>(g, coef_aa, coef_aq, coef_qa, coef_qq, coef_ap, coef_pa, coef_pp,
                             ga.mutable_data_ptr<double>(), go.mutable_data_ptr<double>(),
                             gq.mutable_data_ptr<double>());
  });
  return {ga, go, gq};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CPU, m) {
  m.impl("contrast_sweep", &contrast_sweep_cpu);
  m.impl("contrast_sweep_backward", &contrast_sweep_backward_cpu);
}

}  // namespace sgc_fast
