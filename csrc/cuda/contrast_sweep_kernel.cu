// contrast_sweep on CUDA: the per-pixel (SGC, masked) part of contrast_logits, forward and backward
// (same op semantics as cpu/contrast_sweep_kernel.cpp; see that file and sgc_fast/contrast.py).
//
// The full-resolution vectors, pixel by pixel, from the sum-normalised CAMs ct ([B,h,w], [N,h,w]):
//   a_i = mask_i * (Uy ct_aug_i Ux^T + eps),  p_i = Vy_i ct_orig_i Vx_i^T + eps,
//   q_k = neg_mask_k * (Uy ct_neg_k Ux^T + eps)            (no separate negatives: q = a)
// Forward: float64 gram [B,NQ] (a.q, or a.a with the symmetric fill: gram[i,i] = |a_i|^2), pos [B],
// |a|^2, |p|^2, |q|^2 (= |a|^2 without separate negatives).
// Backward: given the coefficients, the fields
//   dA = C_aa A + C_aq Q + diag(c_ap) P,  dP = diag(c_pa) A + diag(c_pp) P,  dQ = C_qa A + diag(c_qq) Q
// (masked like a and q) pulled back through the upsampling: float64 [B,h,w], [B,h,w], [N,h,w].
// No H x W map is ever stored: every kernel regenerates the pixels it needs from the h x w CAMs.
//
// Kernels (256 threads each; fp32 inputs run in IEEE fp32 FMA, no tensor cores, no TF32; fp64 in fp64):
//  forward
//   gram   Split-K SIMT GEMM: C[i,j] = sum_pix a_i(pix) q_j(pix). Tile 128 x 128 samples, 8 x 8 per
//          thread (warp 32 x 64, lanes 4 x 8: fragments are shared-memory broadcasts), K = pixels in steps
//          of 32 (fp64: 16) pixels of one image row. Each thread regenerates one sample's 32 pixels
//          per step: the y-interpolated CAM row (w values, thread-private in shared memory, redone when
//          the row changes), the 2 x-taps per pixel from a shared table, + eps, mask (32 mask bytes in
//          two 16-byte loads, prefetched before the step's FMAs). Double-buffered tiles, one barrier per
//          step. The image's steps are split into chunks (grid = tiles x chunks, one wave); every block
//          writes its fp32 partial tile, and "finish" adds the chunks in chunk order in float64.
//          Without separate negatives only tiles ti <= tj are computed (a diagonal tile generates one
//          operand and reads it twice).
//   rows   One block per (sample, row chunk): pos, |a|^2, |p|^2 (|q|^2 for a negative) with the
//          per-sample warp Vy_i, Vx_i; thread sums, fixed-order block reduction in float64.
//   finish Sums the partial tiles and row statistics in a fixed order, fills the symmetric gram.
//  backward
//   coef   Coefficient tiles for the field GEMM, k-major, float, zero padded; the diagonal of C_aa is
//          removed (it goes to "rows"), and an all-zero 128 x 32 tile is flagged so it is skipped (with
//          separate negatives C_aa is diagonal: only the C_aq Q part is multiplied).
//   fields Off-diagonal terms: dA_i(pix) = sum_j C[i,j] x_j(pix) as a GEMM with M = output samples
//          (128), N = pixels of one row segment (128), K = operand samples (32 per step; a_j, then q_k),
//          operands regenerated per step (2 x 2 taps per value from ct in L1) and double-buffered. Then
//          per tile: mask, write the tile to shared memory, adjoint of the x-upsampling as a gather over
//          each CAM column's pixel range, adjoint of the y-upsampling into a per-block h x w grid per
//          sample (shared memory; global for large h*w), each grid cell owned by one thread. Grid =
//          M-tiles x pixel chunks; per-chunk grids are written, "finish" adds them in order.
//   rows   Diagonal terms per sample (C_aa[i,i] a_i + c_ap p_i into dA, dP, c_qq q_k into dQ) and
//          their adjoints (x: one warp per (field, column) over its pixel range; y: taps).
//   finish Adds the chunk grids and row grids in a fixed order in float64.
// Determinism: no floating-point atomics anywhere; every sum has a fixed order for a given GPU model
// (chunk counts follow the multiprocessor count).
// Work (B = 256, 224 x 224, fp32): forward B*B/2*H*W multiply-adds (3.3 G for the upper triangle incl.
// diagonal tiles), backward B*B*H*W (6.4 G) plus about 10% for regeneration and adjoints; bytes: the
// masks (12.8 MB per pass, read from L2 by several tiles) and the fp32 partials (about 20 MB).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "op_checks.h"

#include <algorithm>
#include <climits>
#include <cstdint>

namespace sgc_fast {
namespace {

constexpr int kThreads = 256;      // threads of every sweep kernel
constexpr int kWarp = 32;
constexpr int kTileM = 128;        // GEMM tile rows: samples
constexpr int kTileN = 128;        // GEMM tile columns: samples (forward) or pixels of a row segment (backward)
constexpr int kFragM = 8;          // per-thread accumulator tile (kFragM x kFragN)
constexpr int kFragN = 8;
constexpr int kFastTaps = 2;       // interpolation taps held in registers/tables (bilinear rows have <= 2)
constexpr int kRowsBlocksPerSM = 8;  // grid target of the per-sample "rows" kernels
constexpr int kFinishThreads = 256;
constexpr int kFieldGridSmemBudget = 110 * 1024;  // fields kernel: keep the grids in shared memory while
                                                  // the block still fits twice on a multiprocessor
constexpr size_t kSmemAlign = 16;

template <typename T>
struct SweepConfig;
template <>
struct SweepConfig<float> {
  static constexpr int kStep = 32;      // K step of the GEMMs (pixels forward, samples backward)
  static constexpr int kMinBlocks = 2;  // __launch_bounds__: two 256-thread blocks per SM (<= 128 regs)
};
template <>
struct SweepConfig<double> {
  static constexpr int kStep = 16;
  static constexpr int kMinBlocks = 1;
};

static_assert(kThreads == 256 && kTileM == 128 && kTileN == 128 && kFragM == 8 && kFragN == 8,
              "the fragment layout below assumes 8 warps of 4 x 8 lanes, each lane 8 x 8");

// ---------------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------------

struct MaskRef {
  const uint8_t* data;
  int64_t s0, s1, s2;
  bool vec16;  // rows contiguous and 16-byte aligned: 16 mask bytes per load
  __device__ __forceinline__ bool at(int64_t i, int y, int x) const {
    return data[i * s0 + static_cast<int64_t>(y) * s1 + static_cast<int64_t>(x) * s2] != 0;
  }
};

template <typename T>
struct SweepArgs {
  int B, Nq, h, w, H, W;
  int nv;  // 1 or B: matrices in the vy/vx stacks
  const T* ct_aug;
  const T* ct_orig;
  const T* ct_neg;
  const T* uy;  // [H, h]
  const T* ux;  // [W, w]
  const T* vy;  // [nv, H, h]
  const T* vx;  // [nv, W, w]
  MaskRef mask, neg_mask;
  T eps;
};

// ---------------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block in a fixed order; the result is valid in thread 0. `red` holds one value per warp.
__device__ __forceinline__ double block_sum(double v, double* red) {
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  double s = 0.0;
  if (threadIdx.x == 0)
    for (int q = 0; q < static_cast<int>(blockDim.x / kWarp); ++q) s += red[q];
  __syncthreads();
  return s;
}

__device__ __forceinline__ void load4(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double* out) {
  const double2 u = *reinterpret_cast<const double2*>(p);
  const double2 v = *reinterpret_cast<const double2*>(p + 2);
  out[0] = u.x;
  out[1] = u.y;
  out[2] = v.x;
  out[3] = v.y;
}
__device__ __forceinline__ void store4(float* p, const float* in) {
  *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
}
__device__ __forceinline__ void store4(double* p, const double* in) {
  *reinterpret_cast<double2*>(p) = make_double2(in[0], in[1]);
  *reinterpret_cast<double2*>(p + 2) = make_double2(in[2], in[3]);
}

__host__ __device__ inline size_t align_up(size_t n) { return (n + kSmemAlign - 1) / kSmemAlign * kSmemAlign; }

// ---------------------------------------------------------------------------------------------------
// Interpolation taps
// ---------------------------------------------------------------------------------------------------

// Taps of one row m[0..in) of an interpolation matrix. A row with at most kFastTaps nonzero columns
// (every bilinear row) gets the "fast" form: a window of exactly kFastTaps columns inside [0, in) with
// its weights (zeros included). Other rows keep their nonzero window [lo, lo+len) and are read from the
// dense row. Zero weights inside a window add nothing, so both equal the CPU kernel's windows.
template <typename T>
__device__ __forceinline__ bool scan_taps(const T* m, int in, int& lo, int& len, T (&wt)[kFastTaps]) {
  int a = -1, b = -1;
#pragma unroll 1
  for (int c = 0; c < in; ++c)
    if (m[c] != T(0)) {
      if (a < 0) a = c;
      b = c;
    }
  if (a < 0) a = b = 0;  // an all-zero row: one zero tap
  if (b - a < kFastTaps && in >= kFastTaps) {
    lo = a < in - kFastTaps ? a : in - kFastTaps;
    len = kFastTaps;
#pragma unroll
    for (int l = 0; l < kFastTaps; ++l) wt[l] = m[lo + l];
    return true;
  }
  lo = a;
  len = b - a + 1;
#pragma unroll
  for (int l = 0; l < kFastTaps; ++l) wt[l] = T(0);
  return false;
}

// The taps of every row of a dense [rows, in] matrix, in shared memory. Rows past `rows` (up to the
// padded count) are zero windows. `fast` (block-uniform) says every row has the fast form.
template <typename T>
struct TapTable {
  int* lo;
  int* len;
  T* wt;           // [rows][kFastTaps]
  const T* dense;  // [rows][in]
  int in;
  bool fast;

  // Every thread of the block must call this (it ends with a barrier).
  __device__ void build(int rows, int rows_padded) {
    int all_fast = 1;
    for (int r = threadIdx.x; r < rows_padded; r += blockDim.x) {
      T w[kFastTaps];
      int a = 0, n = 0;
      if (r < rows) {
        all_fast &= scan_taps(dense + static_cast<int64_t>(r) * in, in, a, n, w) ? 1 : 0;
      } else {
#pragma unroll
        for (int l = 0; l < kFastTaps; ++l) w[l] = T(0);
      }
      lo[r] = a;
      len[r] = n;
#pragma unroll
      for (int l = 0; l < kFastTaps; ++l) wt[r * kFastTaps + l] = w[l];
    }
    fast = __syncthreads_and(all_fast) != 0;
  }

  // sum_l weight(r, l) * src[(lo + l) * stride]
  __device__ __forceinline__ T dot(int r, const T* src, int stride) const {
    const int a = lo[r];
    T v = T(0);
    if (fast) {
#pragma unroll
      for (int l = 0; l < kFastTaps; ++l) v += wt[r * kFastTaps + l] * src[(a + l) * stride];
    } else {
      const T* m = dense + static_cast<int64_t>(r) * in + a;
      const int n = len[r];
#pragma unroll 1
      for (int l = 0; l < n; ++l) v += m[l] * src[(a + l) * stride];
    }
    return v;
  }
};

// Taps of one row in registers.
template <typename T>
struct RowTaps {
  int lo, len;
  T wt[kFastTaps];
  const T* row;  // dense row + lo (weights of long windows)
  bool fast;
};

template <typename T>
__device__ __forceinline__ RowTaps<T> taps_from_table(const TapTable<T>& tab, int r) {
  RowTaps<T> t;
  t.lo = tab.lo[r];
  t.len = tab.len[r];
#pragma unroll
  for (int l = 0; l < kFastTaps; ++l) t.wt[l] = tab.wt[r * kFastTaps + l];
  t.row = tab.dense + static_cast<int64_t>(r) * tab.in + t.lo;
  t.fast = tab.fast;
  return t;
}

template <typename T>
__device__ __forceinline__ RowTaps<T> taps_of_row(const T* m, int in) {
  RowTaps<T> t;
  t.fast = scan_taps(m, in, t.lo, t.len, t.wt);
  t.row = m + t.lo;
  return t;
}

// One pixel of Ty c Tx^T: sum_lx wx[lx] * (sum_ly wy[ly] * c[ylo + ly][xlo + lx]) (CPU order: rows first).
template <typename T>
__device__ __forceinline__ T interp2_fast(const T* c, int w, const RowTaps<T>& ty, const RowTaps<T>& tx) {
  const T* p = c + ty.lo * w + tx.lo;
  T v = T(0);
#pragma unroll
  for (int lx = 0; lx < kFastTaps; ++lx) {
    T r = T(0);
#pragma unroll
    for (int ly = 0; ly < kFastTaps; ++ly) r += ty.wt[ly] * p[ly * w + lx];
    v += tx.wt[lx] * r;
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T interp2_general(const T* c, int w, const RowTaps<T>& ty, const RowTaps<T>& tx) {
  T v = T(0);
#pragma unroll 1
  for (int lx = 0; lx < tx.len; ++lx) {
    T r = T(0);
#pragma unroll 1
    for (int ly = 0; ly < ty.len; ++ly) r += ty.row[ly] * c[(ty.lo + ly) * w + tx.lo + lx];
    v += tx.row[lx] * r;
  }
  return v;
}

// grid[(lo + l) * w + x] += weight_l * s over the taps of one row (the adjoint of the row interpolation).
template <typename T>
__device__ __forceinline__ void scatter_taps(T* grid, int w, int x, const RowTaps<T>& ty, T s) {
  if (ty.fast) {
#pragma unroll
    for (int l = 0; l < kFastTaps; ++l) grid[(ty.lo + l) * w + x] += ty.wt[l] * s;
  } else {
#pragma unroll 1
    for (int l = 0; l < ty.len; ++l) grid[(ty.lo + l) * w + x] += ty.row[l] * s;
  }
}

// Asynchronous 16-byte global -> shared copies (sm_80+), for the coefficient tiles of the field GEMM.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// ---------------------------------------------------------------------------------------------------
// The GEMM micro-kernel: acc[8][8] += As[k][rows] x Bs[k][cols] over one K step (both k-major, 128 wide)
// ---------------------------------------------------------------------------------------------------

struct Fragment {
  int row0, col0;  // rows row0 + {0..3, 16..19}, columns col0 + {0..3, 32..35}
};

__device__ __forceinline__ Fragment fragment_of(int t) {
  const int warp = t / kWarp, lane = t % kWarp;
  const int wr = warp / 2, wc = warp % 2;  // 4 x 2 warps of 32 x 64
  const int lr = lane / 8, lc = lane % 8;  // 4 x 8 lanes of 8 x 8
  return {wr * 32 + lr * 4, wc * 64 + lc * 4};
}
__device__ __forceinline__ int fragment_row(const Fragment& f, int m) { return f.row0 + (m < 4 ? m : 12 + m); }
__device__ __forceinline__ int fragment_col(const Fragment& f, int n) { return f.col0 + (n < 4 ? n : 28 + n); }

template <typename T, int KS>
__device__ __forceinline__ void tile_mma(const T* __restrict__ As, const T* __restrict__ Bs, const Fragment& f,
                                         T (&acc)[kFragM][kFragN]) {
#pragma unroll
  for (int k = 0; k < KS; ++k) {
    T a[kFragM], b[kFragN];
    load4(As + k * kTileM + f.row0, a);
    load4(As + k * kTileM + f.row0 + 16, a + 4);
    load4(Bs + k * kTileN + f.col0, b);
    load4(Bs + k * kTileN + f.col0 + 32, b + 4);
#pragma unroll
    for (int m = 0; m < kFragM; ++m)
#pragma unroll
      for (int n = 0; n < kFragN; ++n) acc[m][n] = fma(a[m], b[n], acc[m][n]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Forward: gram
// ---------------------------------------------------------------------------------------------------

struct GramSmem {
  size_t bufA, bufB, rowbuf, tap_w, tap_lo, tap_len, total;
};

// The x-tap table covers the padded width (whole steps): padding rows are zero and their mask bits 0.
template <typename T>
__host__ __device__ inline GramSmem gram_smem(int w, int W) {
  constexpr int KS = SweepConfig<T>::kStep;
  W = (W + KS - 1) / KS * KS;
  GramSmem s;
  s.bufA = 0;
  s.bufB = align_up(s.bufA + sizeof(T) * 2 * KS * kTileM);
  s.rowbuf = align_up(s.bufB + sizeof(T) * 2 * KS * kTileN);
  s.tap_w = align_up(s.rowbuf + sizeof(T) * static_cast<size_t>(w) * kThreads);
  s.tap_lo = align_up(s.tap_w + sizeof(T) * static_cast<size_t>(W) * kFastTaps);
  s.tap_len = align_up(s.tap_lo + sizeof(int) * static_cast<size_t>(W));
  s.total = align_up(s.tap_len + sizeof(int) * static_cast<size_t>(W));
  return s;
}

// 32 (fp64: 16) mask bytes of one sample at pixels X0.. of row Y, packed 4 per word (raw bytes or 0/1).
template <int KS>
__device__ __forceinline__ void load_mask_run(const MaskRef& m, bool valid, int64_t sample, int Y, int X0, int W,
                                              uint32_t (&mw)[KS / 4]) {
#pragma unroll
  for (int q = 0; q < KS / 4; ++q) mw[q] = 0u;
  if (!valid) return;
  const uint8_t* p = m.data + sample * m.s0 + static_cast<int64_t>(Y) * m.s1;
  if (m.vec16 && X0 + KS <= W) {
#pragma unroll
    for (int q = 0; q < KS / 16; ++q) {
      const uint4 v = *reinterpret_cast<const uint4*>(p + X0 + 16 * q);
      mw[4 * q + 0] = v.x;
      mw[4 * q + 1] = v.y;
      mw[4 * q + 2] = v.z;
      mw[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < KS; ++k)
      if (X0 + k < W) mw[k / 4] |= (p[static_cast<int64_t>(X0 + k) * m.s2] != 0 ? 1u : 0u) << ((k % 4) * 8);
  }
}

// One step of one sample: pixels X0 .. X0+KS-1 of row Y into dst[k * kTileM] (a column of a k-major tile).
template <typename T, int KS>
__device__ __forceinline__ void generate_run(const SweepArgs<T>& a, const TapTable<T>& xtab, bool valid,
                                             const T* cam, T* rowbuf, int& cur_row, int Y, int X0,
                                             const uint32_t (&mw)[KS / 4], T* dst) {
  if (!valid) {
#pragma unroll
    for (int k = 0; k < KS; ++k) dst[k * kTileM] = T(0);
    return;
  }
  if (Y != cur_row) {  // y-interpolated CAM row, private to this thread (column `threadIdx.x` of rowbuf)
    cur_row = Y;
    const T* uy = a.uy + static_cast<int64_t>(Y) * a.h;
#pragma unroll 1
    for (int x = 0; x < a.w; ++x) {
      T s = T(0);
#pragma unroll 1
      for (int y = 0; y < a.h; ++y) {
        const T wy = uy[y];
        if (wy != T(0)) s += wy * cam[y * a.w + x];
      }
      rowbuf[x * kThreads] = s;
    }
  }
  // Pixels past the row end have zero mask bits (and zero table rows), so they come out as 0.
  if (xtab.fast) {
#pragma unroll
    for (int k = 0; k < KS; ++k) {
      const int X = X0 + k;
      const T* r = rowbuf + xtab.lo[X] * kThreads;
      T v = T(0);
#pragma unroll
      for (int l = 0; l < kFastTaps; ++l) v += xtab.wt[X * kFastTaps + l] * r[l * kThreads];
      dst[k * kTileM] = ((mw[k / 4] >> ((k % 4) * 8)) & 0xffu) != 0u ? v + a.eps : T(0);
    }
  } else {
    uint32_t bits = 0u;
#pragma unroll
    for (int k = 0; k < KS; ++k) bits |= (((mw[k / 4] >> ((k % 4) * 8)) & 0xffu) != 0u ? 1u : 0u) << k;
#pragma unroll 1
    for (int k = 0; k < KS; ++k)
      dst[k * kTileM] = ((bits >> k) & 1u) != 0u ? xtab.dot(X0 + k, rowbuf, kThreads) + a.eps : T(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, SweepConfig<T>::kMinBlocks)
    sweep_gram_kernel(SweepArgs<T> a, int ntm, int ntn, int nchunks, T* __restrict__ part) {
  constexpr int KS = SweepConfig<T>::kStep;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const GramSmem L = gram_smem<T>(a.w, a.W);
  T* bufA = reinterpret_cast<T*>(smem_raw + L.bufA);  // [2][KS][kTileM]
  T* bufB = reinterpret_cast<T*>(smem_raw + L.bufB);  // [2][KS][kTileN]
  T* rowbuf = reinterpret_cast<T*>(smem_raw + L.rowbuf) + threadIdx.x;  // [w][kThreads], this column
  TapTable<T> xtab{reinterpret_cast<int*>(smem_raw + L.tap_lo), reinterpret_cast<int*>(smem_raw + L.tap_len),
                   reinterpret_cast<T*>(smem_raw + L.tap_w), a.ux, a.w, false};

  const bool symmetric = a.Nq == 0;
  int ti, tj;
  if (symmetric) {  // blockIdx.x enumerates the tiles ti <= tj row by row
    int id = blockIdx.x;
    ti = 0;
    while (id >= ntm - ti) {
      id -= ntm - ti;
      ++ti;
    }
    tj = ti + id;
  } else {
    ti = blockIdx.x / ntn;
    tj = blockIdx.x % ntn;
  }
  const bool diag = symmetric && ti == tj;
  const int chunk = blockIdx.y;
  const int per_row = (a.W + KS - 1) / KS;
  const int64_t steps = static_cast<int64_t>(a.H) * per_row;
  const int64_t s_begin = steps * chunk / nchunks, s_end = steps * (chunk + 1) / nchunks;

  xtab.build(a.W, per_row * KS);

  // This thread's operand column: rows ti*128 + t (t < 128), columns tj*128 + t - 128 (t >= 128).
  const int t = threadIdx.x;
  const bool row_slot = t < kTileM;
  const int64_t sample = row_slot ? static_cast<int64_t>(ti) * kTileM + t : static_cast<int64_t>(tj) * kTileN + t - kTileM;
  const bool from_aug = row_slot || symmetric;
  const int count = from_aug ? a.B : a.Nq;
  const bool valid = (row_slot || !diag) && sample < count;
  const T* cam = (from_aug ? a.ct_aug : a.ct_neg) + (valid ? sample * a.h * a.w : 0);
  const MaskRef mref = from_aug ? a.mask : a.neg_mask;
  const bool generates = row_slot || !diag;
  T* dst0 = row_slot ? bufA + t : bufB + (t - kTileM);
  const int buf_stride = KS * kTileM;  // == KS * kTileN

  const Fragment f = fragment_of(t);
  T acc[kFragM][kFragN];
#pragma unroll
  for (int m = 0; m < kFragM; ++m)
#pragma unroll
    for (int n = 0; n < kFragN; ++n) acc[m][n] = T(0);
  int cur_row = -1;
  uint32_t mw[KS / 4];

  if (s_begin < s_end) {
    const int Y = static_cast<int>(s_begin / per_row), X0 = static_cast<int>(s_begin % per_row) * KS;
    load_mask_run<KS>(mref, valid, sample, Y, X0, a.W, mw);
    if (generates) generate_run<T, KS>(a, xtab, valid, cam, rowbuf, cur_row, Y, X0, mw, dst0);
  }
  __syncthreads();
  for (int64_t s = s_begin; s < s_end; ++s) {
    const int cur = static_cast<int>((s - s_begin) & 1);
    const bool next = s + 1 < s_end;
    const int Yn = static_cast<int>((s + 1) / per_row), Xn = static_cast<int>((s + 1) % per_row) * KS;
    if (next) load_mask_run<KS>(mref, valid, sample, Yn, Xn, a.W, mw);
    const T* As = bufA + cur * buf_stride;
    tile_mma<T, KS>(As, diag ? As : bufB + cur * buf_stride, f, acc);
    if (next && generates)
      generate_run<T, KS>(a, xtab, valid, cam, rowbuf, cur_row, Yn, Xn, mw, dst0 + (cur ^ 1) * buf_stride);
    __syncthreads();
  }

  T* out = part + ((static_cast<int64_t>(chunk) * ntm + ti) * ntn + tj) * (kTileM * kTileN);
#pragma unroll
  for (int m = 0; m < kFragM; ++m) {
    const int r = fragment_row(f, m);
    store4(out + r * kTileN + f.col0, acc[m]);
    store4(out + r * kTileN + f.col0 + 32, acc[m] + 4);
  }
}

// ---------------------------------------------------------------------------------------------------
// Per-sample ("rows") kernels: shared memory layout
// ---------------------------------------------------------------------------------------------------

struct RowsSmem {
  size_t red, wtU, wtV, rowA, rowP, fieldA, fieldP, gridA, gridP, loU, lenU, loV, lenV, colU0, colU1, colV0, colV1,
      total;
};

template <typename T>
__host__ __device__ inline RowsSmem rows_smem(int h, int w, int W, bool backward) {
  RowsSmem s;
  const size_t tw = sizeof(T) * static_cast<size_t>(W) * kFastTaps;
  s.red = 0;
  s.wtU = align_up(s.red + sizeof(double) * (kThreads / kWarp));
  s.wtV = align_up(s.wtU + tw);
  s.rowA = align_up(s.wtV + tw);
  s.rowP = align_up(s.rowA + sizeof(T) * w);
  s.fieldA = align_up(s.rowP + sizeof(T) * w);
  const size_t field = backward ? sizeof(T) * static_cast<size_t>(W) : 0;
  const size_t grid = backward ? sizeof(T) * static_cast<size_t>(h) * w : 0;
  s.fieldP = align_up(s.fieldA + field);
  s.gridA = align_up(s.fieldP + field);
  s.gridP = align_up(s.gridA + grid);
  s.loU = align_up(s.gridP + grid);
  s.lenU = align_up(s.loU + sizeof(int) * W);
  s.loV = align_up(s.lenU + sizeof(int) * W);
  s.lenV = align_up(s.loV + sizeof(int) * W);
  const size_t col = backward ? sizeof(int) * static_cast<size_t>(w) : 0;
  s.colU0 = align_up(s.lenV + sizeof(int) * W);
  s.colU1 = align_up(s.colU0 + col);
  s.colV0 = align_up(s.colU1 + col);
  s.colV1 = align_up(s.colV0 + col);
  s.total = align_up(s.colV1 + col);
  return s;
}

template <typename T>
struct RowsView {
  TapTable<T> U, V;
  T *rowA, *rowP;
  __device__ RowsView(unsigned char* smem, const RowsSmem& L, const SweepArgs<T>& a, const T* vx_i)
      : U{reinterpret_cast<int*>(smem + L.loU), reinterpret_cast<int*>(smem + L.lenU),
          reinterpret_cast<T*>(smem + L.wtU), a.ux, a.w, false},
        V{reinterpret_cast<int*>(smem + L.loV), reinterpret_cast<int*>(smem + L.lenV),
          reinterpret_cast<T*>(smem + L.wtV), vx_i, a.w, false},
        rowA(reinterpret_cast<T*>(smem + L.rowA)),
        rowP(reinterpret_cast<T*>(smem + L.rowP)) {}
};

// row[x] = sum_y M[Y, y] c[y, x]: one row of M c, by the first w threads.
template <typename T>
__device__ __forceinline__ void interp_row(const T* m_row, const T* c, int h, int w, T* row) {
  for (int x = threadIdx.x; x < w; x += blockDim.x) {
    T s = T(0);
    for (int y = 0; y < h; ++y) {
      const T wy = m_row[y];
      if (wy != T(0)) s += wy * c[y * w + x];
    }
    row[x] = s;
  }
}

// Blocks (item, row chunk); items are the B samples, then the Nq separate negatives.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sweep_rows_forward_kernel(SweepArgs<T> a, int nrc, double* __restrict__ part) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const RowsSmem L = rows_smem<T>(a.h, a.w, a.W, false);
  const int item = blockIdx.x, rc = blockIdx.y;
  const bool is_aug = item < a.B;
  const int vi = a.nv == 1 ? 0 : (is_aug ? item : 0);
  const T* vx_i = a.vx + static_cast<int64_t>(vi) * a.W * a.w;
  const T* vy_i = a.vy + static_cast<int64_t>(vi) * a.H * a.h;
  RowsView<T> v(smem_raw, L, a, vx_i);
  double* red = reinterpret_cast<double*>(smem_raw + L.red);
  const int hw = a.h * a.w;
  const int Y0 = static_cast<int>(static_cast<int64_t>(a.H) * rc / nrc);
  const int Y1 = static_cast<int>(static_cast<int64_t>(a.H) * (rc + 1) / nrc);
  v.U.build(a.W, a.W);
  if (is_aug) v.V.build(a.W, a.W);  // is_aug is the same for the whole block
  const T* ca = is_aug ? a.ct_aug + static_cast<int64_t>(item) * hw : a.ct_neg + static_cast<int64_t>(item - a.B) * hw;
  const T* co = a.ct_orig + static_cast<int64_t>(is_aug ? item : 0) * hw;
  const MaskRef m = is_aug ? a.mask : a.neg_mask;
  const int64_t ms = is_aug ? item : item - a.B;
  T s_ap = T(0), s_aa = T(0), s_pp = T(0);
  __syncthreads();
  for (int Y = Y0; Y < Y1; ++Y) {
    interp_row(a.uy + static_cast<int64_t>(Y) * a.h, ca, a.h, a.w, v.rowA);
    if (is_aug) interp_row(vy_i + static_cast<int64_t>(Y) * a.h, co, a.h, a.w, v.rowP);
    __syncthreads();
    for (int X = threadIdx.x; X < a.W; X += blockDim.x) {
      const T av = m.at(ms, Y, X) ? v.U.dot(X, v.rowA, 1) + a.eps : T(0);
      if (is_aug) {
        const T pv = v.V.dot(X, v.rowP, 1) + a.eps;
        s_ap += av * pv;
        s_aa += av * av;
        s_pp += pv * pv;
      } else {
        s_aa += av * av;
      }
    }
    __syncthreads();
  }
  const double t_ap = block_sum(static_cast<double>(s_ap), red);
  const double t_aa = block_sum(static_cast<double>(s_aa), red);
  const double t_pp = block_sum(static_cast<double>(s_pp), red);
  if (threadIdx.x == 0) {
    double* o = part + (static_cast<int64_t>(rc) * (a.B + a.Nq) + item) * 3;
    o[0] = t_ap;  // negatives: 0
    o[1] = t_aa;  // negatives: |q|^2
    o[2] = t_pp;
  }
}

// Adds the chunks of the gram tiles and of the row statistics in a fixed order.
template <typename T>
__global__ void sweep_stats_finish_kernel(const T* __restrict__ gram_part, const double* __restrict__ rows_part, int B,
                                          int Nq, int ntm, int ntn, int nchunks, int nrc, double* __restrict__ gram,
                                          double* __restrict__ pos, double* __restrict__ norm_aug,
                                          double* __restrict__ norm_orig, double* __restrict__ norm_neg) {
  const int64_t NQ = Nq > 0 ? Nq : B, items = static_cast<int64_t>(B) + Nq;
  const int64_t total = B * NQ + 3 * static_cast<int64_t>(B) + NQ;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= total) return;
  auto row_stat = [&](int64_t item, int slot) {
    double s = 0.0;
    for (int rc = 0; rc < nrc; ++rc) s += rows_part[(rc * items + item) * 3 + slot];
    return s;
  };
  if (e < B * NQ) {
    const int64_t i = e / NQ, j = e % NQ;
    if (Nq == 0 && i == j) {
      gram[e] = row_stat(i, 1);
      return;
    }
    const int64_t r = (Nq == 0 && j < i) ? j : i, c = (Nq == 0 && j < i) ? i : j;
    const int64_t in_tile = (r % kTileM) * kTileN + c % kTileN;
    const int64_t tile = (r / kTileM) * ntn + c / kTileN;
    const int64_t tile_elems = static_cast<int64_t>(kTileM) * kTileN;
    double s = 0.0;
    for (int ch = 0; ch < nchunks; ++ch)
      s += static_cast<double>(gram_part[(static_cast<int64_t>(ch) * ntm * ntn + tile) * tile_elems + in_tile]);
    gram[e] = s;
    return;
  }
  const int64_t q = e - B * NQ;
  if (q < B) {
    pos[q] = row_stat(q, 0);
  } else if (q < 2 * B) {
    norm_aug[q - B] = row_stat(q - B, 1);
  } else if (q < 3 * B) {
    norm_orig[q - 2 * B] = row_stat(q - 2 * B, 2);
  } else {
    const int64_t k = q - 3 * B;
    norm_neg[k] = row_stat(Nq == 0 ? k : B + k, 1);
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

// Coefficient tiles of the field GEMM, k-major [Kpad][Mpad] in T, and a flag per (M tile, K step):
//   group 0 (rows = the B samples): operands a_j (C_aa without its diagonal), then q_k (C_aq);
//   group 1 (rows = the Nq negatives): operands a_i (C_qa).
template <typename T>
__global__ void sweep_coef_kernel(const double* __restrict__ caa, const double* __restrict__ caq,
                                  const double* __restrict__ cqa, int B, int Nq, T* __restrict__ coef_aug,
                                  int* __restrict__ flags_aug, int mt_aug, int ks_aug, T* __restrict__ coef_neg,
                                  int* __restrict__ flags_neg, int mt_neg, int ks_neg) {
  constexpr int KS = SweepConfig<T>::kStep;
  const int group = blockIdx.z, ks = blockIdx.x, mt = blockIdx.y;
  const int n_mt = group == 0 ? mt_aug : mt_neg, n_ks = group == 0 ? ks_aug : ks_neg;
  if (mt >= n_mt || ks >= n_ks) return;  // the whole block
  const int64_t M = group == 0 ? B : Nq, Kt = group == 0 ? static_cast<int64_t>(B) + Nq : B;
  const int64_t Mpad = static_cast<int64_t>(n_mt) * kTileM;
  T* out = group == 0 ? coef_aug : coef_neg;
  int nonzero = 0;
  for (int e = threadIdx.x; e < KS * kTileM; e += blockDim.x) {
    const int64_t i = static_cast<int64_t>(mt) * kTileM + e % kTileM, j = static_cast<int64_t>(ks) * KS + e / kTileM;
    double v = 0.0;
    if (i < M && j < Kt) {
      if (group == 0) {
        v = j < B ? (i == j ? 0.0 : caa[i * B + j]) : caq[i * Nq + (j - B)];
      } else {
        v = cqa[i * B + j];
      }
    }
    const T tv = static_cast<T>(v);
    out[j * Mpad + i] = tv;
    nonzero |= tv != T(0) ? 1 : 0;
  }
  const int any = __syncthreads_or(nonzero);
  if (threadIdx.x == 0) (group == 0 ? flags_aug : flags_neg)[mt * n_ks + ks] = any;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sweep_rows_backward_kernel(SweepArgs<T> a, int nrc, const double* __restrict__ caa, const double* __restrict__ cap,
                               const double* __restrict__ cpa, const double* __restrict__ cpp,
                               const double* __restrict__ cqq, T* __restrict__ rows_aug, T* __restrict__ rows_orig,
                               T* __restrict__ rows_neg) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const RowsSmem L = rows_smem<T>(a.h, a.w, a.W, true);
  const int item = blockIdx.x, rc = blockIdx.y;
  const bool is_aug = item < a.B;
  const int vi = a.nv == 1 ? 0 : (is_aug ? item : 0);
  const T* vx_i = a.vx + static_cast<int64_t>(vi) * a.W * a.w;
  const T* vy_i = a.vy + static_cast<int64_t>(vi) * a.H * a.h;
  RowsView<T> v(smem_raw, L, a, vx_i);
  T* fieldA = reinterpret_cast<T*>(smem_raw + L.fieldA);
  T* fieldP = reinterpret_cast<T*>(smem_raw + L.fieldP);
  T* gridA = reinterpret_cast<T*>(smem_raw + L.gridA);
  T* gridP = reinterpret_cast<T*>(smem_raw + L.gridP);
  int* colU_lo = reinterpret_cast<int*>(smem_raw + L.colU0);  // pixel range of each CAM column (U, then V)
  int* colU_hi = reinterpret_cast<int*>(smem_raw + L.colU1);
  int* colV_lo = reinterpret_cast<int*>(smem_raw + L.colV0);
  int* colV_hi = reinterpret_cast<int*>(smem_raw + L.colV1);
  const int hw = a.h * a.w, t = threadIdx.x;
  const int Y0 = static_cast<int>(static_cast<int64_t>(a.H) * rc / nrc);
  const int Y1 = static_cast<int>(static_cast<int64_t>(a.H) * (rc + 1) / nrc);
  const int nfields = is_aug ? 2 : 1;

  v.U.build(a.W, a.W);
  if (is_aug) v.V.build(a.W, a.W);  // is_aug is the same for the whole block
  for (int x = t; x < a.w; x += blockDim.x) {
    colU_lo[x] = colV_lo[x] = INT_MAX;
    colU_hi[x] = colV_hi[x] = -1;
  }
  for (int p = t; p < hw; p += blockDim.x) gridA[p] = gridP[p] = T(0);
  __syncthreads();
  // Pixel range of each CAM column: the rows X whose tap window holds it (integer atomics: exact).
  for (int f = 0; f < nfields; ++f) {
    const TapTable<T> tab = f == 0 ? v.U : v.V;
    int* lo = f == 0 ? colU_lo : colV_lo;
    int* hi = f == 0 ? colU_hi : colV_hi;
    for (int X = t; X < a.W; X += blockDim.x)
      for (int x = tab.lo[X]; x < tab.lo[X] + tab.len[X]; ++x) {
        atomicMin(&lo[x], X);
        atomicMax(&hi[x], X);
      }
  }
  const T* ca = is_aug ? a.ct_aug + static_cast<int64_t>(item) * hw : a.ct_neg + static_cast<int64_t>(item - a.B) * hw;
  const T* co = a.ct_orig + static_cast<int64_t>(is_aug ? item : 0) * hw;
  const MaskRef m = is_aug ? a.mask : a.neg_mask;
  const int64_t ms = is_aug ? item : item - a.B;
  const T c_aa = is_aug ? static_cast<T>(caa[static_cast<int64_t>(item) * a.B + item]) : T(0);
  const T c_ap = is_aug ? static_cast<T>(cap[item]) : T(0);
  const T c_pa = is_aug ? static_cast<T>(cpa[item]) : T(0);
  const T c_pp = is_aug ? static_cast<T>(cpp[item]) : T(0);
  const T c_qq = is_aug ? T(0) : static_cast<T>(cqq[item - a.B]);
  const int warp = t / kWarp, lane = t % kWarp, nwarps = blockDim.x / kWarp;
  __syncthreads();
  for (int Y = Y0; Y < Y1; ++Y) {
    interp_row(a.uy + static_cast<int64_t>(Y) * a.h, ca, a.h, a.w, v.rowA);
    if (is_aug) interp_row(vy_i + static_cast<int64_t>(Y) * a.h, co, a.h, a.w, v.rowP);
    __syncthreads();
    for (int X = t; X < a.W; X += blockDim.x) {
      const bool keep = m.at(ms, Y, X);
      const T av = keep ? v.U.dot(X, v.rowA, 1) + a.eps : T(0);
      if (is_aug) {
        const T pv = v.V.dot(X, v.rowP, 1) + a.eps;
        fieldA[X] = keep ? c_aa * av + c_ap * pv : T(0);
        fieldP[X] = c_pa * av + c_pp * pv;
      } else {
        fieldA[X] = keep ? c_qq * av : T(0);
      }
    }
    __syncthreads();
    // Adjoint: (field, column x) pairs, one warp each; grid cells of column x belong to that warp.
    for (int q = warp; q < nfields * a.w; q += nwarps) {
      const int f = q / a.w, x = q % a.w;
      const T* mx = f == 0 ? a.ux : vx_i;
      const T* field = f == 0 ? fieldA : fieldP;
      const int X_lo = f == 0 ? colU_lo[x] : colV_lo[x];  // empty (INT_MAX, -1) for an unused column
      const int X_hi = f == 0 ? colU_hi[x] : colV_hi[x];
      T s = T(0);
      if (X_lo <= X_hi)
        for (int X = X_lo + lane; X <= X_hi; X += kWarp) s += mx[static_cast<int64_t>(X) * a.w + x] * field[X];
      s = warp_sum(s);
      if (lane == 0) {
        const T* my = (f == 0 ? a.uy : vy_i) + static_cast<int64_t>(Y) * a.h;
        T* grid = f == 0 ? gridA : gridP;
        for (int y = 0; y < a.h; ++y)
          if (my[y] != T(0)) grid[y * a.w + x] += my[y] * s;
      }
    }
    __syncthreads();
  }
  for (int p = t; p < hw; p += blockDim.x) {
    if (is_aug) {
      rows_aug[(static_cast<int64_t>(rc) * a.B + item) * hw + p] = gridA[p];
      rows_orig[(static_cast<int64_t>(rc) * a.B + item) * hw + p] = gridP[p];
    } else {
      rows_neg[(static_cast<int64_t>(rc) * a.Nq + (item - a.B)) * hw + p] = gridA[p];
    }
  }
}

struct FieldsSmem {
  size_t buf, tap_w, grid, tap_lo, tap_len, col_lo, col_hi, active, nactive, total;
};

template <typename T>
__host__ __device__ inline FieldsSmem fields_smem(int h, int w, int W, int max_steps, bool grid_in_smem) {
  constexpr int KS = SweepConfig<T>::kStep;
  const size_t tiles = static_cast<size_t>(2) * KS * (kTileM + kTileN);
  const size_t out_tile = static_cast<size_t>(kTileM) * (kTileN + 1);
  FieldsSmem s;
  s.buf = 0;
  s.tap_w = align_up(s.buf + sizeof(T) * (tiles > out_tile ? tiles : out_tile));
  s.grid = align_up(s.tap_w + sizeof(T) * static_cast<size_t>(W) * kFastTaps);
  s.tap_lo = align_up(s.grid + (grid_in_smem ? sizeof(T) * static_cast<size_t>(kTileM) * h * w : 0));
  s.tap_len = align_up(s.tap_lo + sizeof(int) * W);
  s.col_lo = align_up(s.tap_len + sizeof(int) * W);
  s.col_hi = align_up(s.col_lo + sizeof(int) * w);
  s.active = align_up(s.col_hi + sizeof(int) * w);
  s.nactive = align_up(s.active + sizeof(int) * static_cast<size_t>(max_steps));
  s.total = align_up(s.nactive + sizeof(int));
  return s;
}

struct FieldsGeometry {
  int mt_aug, mt_neg, ks_aug, ks_neg;  // M tiles and K steps of both groups
  int nseg, seglen;                    // row segments: pixel tiles are segments of one image row
  int nchunks;
  bool grid_in_smem;
};

// Field GEMM. Blocks (pixel chunk, M tile); M tiles are group 0's, then group 1's.
template <typename T>
__global__ void __launch_bounds__(kThreads, SweepConfig<T>::kMinBlocks)
    sweep_fields_kernel(SweepArgs<T> a, FieldsGeometry g, const T* __restrict__ coef_aug,
                        const int* __restrict__ flags_aug, const T* __restrict__ coef_neg,
                        const int* __restrict__ flags_neg, T* __restrict__ part) {
  constexpr int KS = SweepConfig<T>::kStep;
  constexpr int kGroups = kThreads / kTileN;    // operand rows generated per thread pass
  constexpr int kPerThread = KS / kGroups;      // operand values generated per thread and step
  constexpr int kChunkElems = 16 / static_cast<int>(sizeof(T));           // elements per 16-byte copy
  constexpr int kCopies = KS * kTileM / kChunkElems / kThreads;           // 16-byte copies per thread and step
  constexpr int kLdd = kTileN + 1;              // row stride of the output tile (odd: no bank conflicts)
  static_assert(kPerThread % 4 == 0 && kCopies >= 1 && KS * kTileM % (kChunkElems * kThreads) == 0,
                "step too small for the copy layout");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int max_steps = g.ks_aug > g.ks_neg ? g.ks_aug : g.ks_neg;
  const FieldsSmem L = fields_smem<T>(a.h, a.w, a.W, max_steps, g.grid_in_smem);
  T* buf = reinterpret_cast<T*>(smem_raw + L.buf);
  T* Cs = buf;                              // [2][KS][kTileM] coefficients
  T* Xs = buf + 2 * KS * kTileM;            // [2][KS][kTileN] operands
  T* dA = buf;                              // [kTileM][kLdd] after the K loop
  TapTable<T> xtab{reinterpret_cast<int*>(smem_raw + L.tap_lo), reinterpret_cast<int*>(smem_raw + L.tap_len),
                   reinterpret_cast<T*>(smem_raw + L.tap_w), a.ux, a.w, false};
  int* col_lo = reinterpret_cast<int*>(smem_raw + L.col_lo);
  int* col_hi = reinterpret_cast<int*>(smem_raw + L.col_hi);
  int* active = reinterpret_cast<int*>(smem_raw + L.active);
  int* nactive_s = reinterpret_cast<int*>(smem_raw + L.nactive);

  const int t = threadIdx.x;
  const int chunk = blockIdx.x, mtg = blockIdx.y;
  const int group = mtg < g.mt_aug ? 0 : 1;
  const int mt = group == 0 ? mtg : mtg - g.mt_aug;
  const int M = group == 0 ? a.B : a.Nq;
  const int Kt = group == 0 ? a.B + a.Nq : a.B;
  const int nks = group == 0 ? g.ks_aug : g.ks_neg;
  const int64_t Mpad = static_cast<int64_t>(group == 0 ? g.mt_aug : g.mt_neg) * kTileM;
  const T* coef = group == 0 ? coef_aug : coef_neg;
  const int* flags = (group == 0 ? flags_aug : flags_neg) + static_cast<int64_t>(mt) * nks;
  const MaskRef out_mask = group == 0 ? a.mask : a.neg_mask;
  const int i0 = mt * kTileM;
  const int mrows = M - i0 < kTileM ? M - i0 : kTileM;
  const int hw = a.h * a.w;
  T* out_rows = part + (static_cast<int64_t>(chunk) * (a.B + a.Nq) + (group == 0 ? 0 : a.B) + i0) * hw;
  T* grid = g.grid_in_smem ? reinterpret_cast<T*>(smem_raw + L.grid) : out_rows;  // [mrows][hw]

  xtab.build(a.W, a.W);
  for (int x = t; x < a.w; x += blockDim.x) {
    col_lo[x] = INT_MAX;
    col_hi[x] = -1;
  }
  for (int e = t; e < mrows * hw; e += blockDim.x) grid[e] = T(0);
  if (t == 0) {
    int n = 0;
    for (int s = 0; s < nks; ++s)
      if (flags[s] != 0) active[n++] = s;
    *nactive_s = n;
  }
  __syncthreads();
  for (int X = t; X < a.W; X += blockDim.x)
    for (int x = xtab.lo[X]; x < xtab.lo[X] + xtab.len[X]; ++x) {
      atomicMin(&col_lo[x], X);
      atomicMax(&col_hi[x], X);
    }
  __syncthreads();
  const int nactive = *nactive_s;

  const Fragment f = fragment_of(t);
  const int gp = t % kTileN, kg = t / kTileN;  // generation: pixel gp of the segment, operands kg + 2r
  const int64_t tiles = static_cast<int64_t>(a.H) * g.nseg;
  const int64_t tile_begin = tiles * chunk / g.nchunks, tile_end = tiles * (chunk + 1) / g.nchunks;

  for (int64_t tile = tile_begin; tile < tile_end && nactive > 0; ++tile) {
    const int Y = static_cast<int>(tile / g.nseg), X0 = static_cast<int>(tile % g.nseg) * g.seglen;
    const int npix = a.W - X0 < g.seglen ? a.W - X0 : g.seglen;
    const RowTaps<T> ty = taps_of_row(a.uy + static_cast<int64_t>(Y) * a.h, a.h);
    const int Xg = X0 + gp;
    const bool gvalid = gp < npix;
    const RowTaps<T> tx = taps_from_table(xtab, gvalid ? Xg : 0);  // (unused where !gvalid: mask bits 0)
    const bool fast = xtab.fast && ty.fast;                           // the same in the whole block

    uint32_t gbits = 0u;  // bit r: operand kg + 2r of the step is inside its mask at this pixel
    auto load_gen_mask = [&](int step) {
      gbits = 0u;
#pragma unroll
      for (int r = 0; r < kPerThread; ++r) {
        const int j = step * KS + kg + kGroups * r;
        bool keep = false;
        if (gvalid && j < Kt) keep = j < a.B ? a.mask.at(j, Y, Xg) : a.neg_mask.at(j - a.B, Y, Xg);
        gbits |= (keep ? 1u : 0u) << r;
      }
    };
    auto operand = [&](int j) {
      return j < a.B ? a.ct_aug + static_cast<int64_t>(j) * hw : a.ct_neg + static_cast<int64_t>(j - a.B) * hw;
    };
    auto generate = [&](int step, T* dst) {
      if (fast) {
#pragma unroll
        for (int r = 0; r < kPerThread; ++r) {
          const int k = kg + kGroups * r;
          T v = T(0);
          if ((gbits >> r) & 1u) v = interp2_fast(operand(step * KS + k), a.w, ty, tx) + a.eps;
          dst[k * kTileN + gp] = v;
        }
      } else {
#pragma unroll 1
        for (int r = 0; r < kPerThread; ++r) {
          const int k = kg + kGroups * r;
          T v = T(0);
          if ((gbits >> r) & 1u) v = interp2_general(operand(step * KS + k), a.w, ty, tx) + a.eps;
          dst[k * kTileN + gp] = v;
        }
      }
    };
    // Coefficient tile of one step -> Cs buffer, asynchronously (waited for before the step's barrier).
    auto copy_coef = [&](int step, T* dst) {
#pragma unroll
      for (int q = 0; q < kCopies; ++q) {
        const int e = t + kThreads * q;
        const int k = e / (kTileM / kChunkElems), m = (e % (kTileM / kChunkElems)) * kChunkElems;
        cp_async16(dst + k * kTileM + m, coef + (static_cast<int64_t>(step) * KS + k) * Mpad + i0 + m);
      }
      cp_async_commit();
    };

    T acc[kFragM][kFragN];
#pragma unroll
    for (int m = 0; m < kFragM; ++m)
#pragma unroll
      for (int n = 0; n < kFragN; ++n) acc[m][n] = T(0);

    copy_coef(active[0], Cs);
    load_gen_mask(active[0]);
    generate(active[0], Xs);
    cp_async_wait_all();
    __syncthreads();
    for (int q = 0; q < nactive; ++q) {
      const int cur = q & 1;
      const bool next = q + 1 < nactive;
      if (next) {
        copy_coef(active[q + 1], Cs + (cur ^ 1) * KS * kTileM);
        load_gen_mask(active[q + 1]);
      }
      tile_mma<T, KS>(Cs + cur * KS * kTileM, Xs + cur * KS * kTileN, f, acc);
      if (next) generate(active[q + 1], Xs + (cur ^ 1) * KS * kTileN);
      cp_async_wait_all();
      __syncthreads();
    }

    // Masked field tile -> shared memory (the operand buffers are free after the last barrier).
#pragma unroll
    for (int m = 0; m < kFragM; ++m) {
      const int i = fragment_row(f, m);
#pragma unroll
      for (int n = 0; n < kFragN; ++n) {
        const int p = fragment_col(f, n);
        const bool keep = i < mrows && p < npix && out_mask.at(i0 + i, Y, X0 + p);
        dA[i * kLdd + p] = keep ? acc[m][n] : T(0);
      }
    }
    __syncthreads();
    // Adjoint: pair (i, x) sums column x's pixel range of the segment, then the y taps of row Y.
    for (int pr = t; pr < kTileM * a.w; pr += blockDim.x) {
      const int i = pr / a.w, x = pr % a.w;
      if (i >= mrows) break;  // pairs are in row order
      const int p_lo = col_lo[x] - X0 > 0 ? col_lo[x] - X0 : 0;
      const int p_hi = col_hi[x] - X0 < npix - 1 ? col_hi[x] - X0 : npix - 1;
      T s = T(0);
      for (int p = p_lo; p <= p_hi; ++p) s += a.ux[static_cast<int64_t>(X0 + p) * a.w + x] * dA[i * kLdd + p];
      scatter_taps(grid + static_cast<int64_t>(i) * hw, a.w, x, ty, s);
    }
    __syncthreads();
  }

  if (g.grid_in_smem) {
    for (int e = t; e < mrows * hw; e += blockDim.x) out_rows[e] = grid[e];
  }
}

// grad = sum of the chunk grids (field GEMM) + the row-chunk grids (diagonal terms), in order.
template <typename T>
__global__ void sweep_grads_finish_kernel(const T* __restrict__ fields_part, int nchunks, const T* __restrict__ rows_aug,
                                          const T* __restrict__ rows_orig, const T* __restrict__ rows_neg, int nrc,
                                          int B, int Nq, int hw, double* __restrict__ grad_aug,
                                          double* __restrict__ grad_orig, double* __restrict__ grad_neg) {
  const int64_t rows = static_cast<int64_t>(B) + Nq;
  const int64_t n_aug = static_cast<int64_t>(B) * hw, n_neg = static_cast<int64_t>(Nq) * hw;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= 2 * n_aug + n_neg) return;
  double s = 0.0;
  if (e < n_aug) {
    for (int c = 0; c < nchunks; ++c) s += static_cast<double>(fields_part[c * rows * hw + e]);
    for (int rc = 0; rc < nrc; ++rc) s += static_cast<double>(rows_aug[rc * n_aug + e]);
    grad_aug[e] = s;
  } else if (e < 2 * n_aug) {
    const int64_t o = e - n_aug;
    for (int rc = 0; rc < nrc; ++rc) s += static_cast<double>(rows_orig[rc * n_aug + o]);
    grad_orig[o] = s;
  } else {
    const int64_t o = e - 2 * n_aug;
    for (int c = 0; c < nchunks; ++c) s += static_cast<double>(fields_part[c * rows * hw + n_aug + o]);
    for (int rc = 0; rc < nrc; ++rc) s += static_cast<double>(rows_neg[rc * n_neg + o]);
    grad_neg[o] = s;
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------

// The shared checks of op_checks.h, plus what the CUDA kernels need.
void check_sweep_inputs_cuda(const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& mask,
                             const at::Tensor& uy, const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx,
                             const at::Tensor& neg_cam, const at::Tensor& neg_mask) {
  check_sweep_inputs(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask);
  TORCH_CHECK(cam_aug.is_cuda(), "cam_aug: expected a CUDA tensor, got one on ", cam_aug.device());
  const int64_t B = cam_aug.size(0), h = cam_aug.size(1), w = cam_aug.size(2), H = uy.size(0), W = ux.size(0);
  TORCH_CHECK(B + neg_cam.size(0) < INT_MAX && H < INT_MAX && W < INT_MAX && h * w < INT_MAX,
              "contrast_sweep: sizes too large, got cam_aug ", cam_aug.sizes(), " and ", H, " x ", W, " maps");
}

MaskRef mask_ref(const at::Tensor& m) {
  MaskRef r{nullptr, 0, 0, 0, false};
  if (m.numel() == 0) return r;
  r.data = m.const_data_ptr<uint8_t>();
  r.s0 = m.stride(0);
  r.s1 = m.stride(1);
  r.s2 = m.stride(2);
  r.vec16 = r.s2 == 1 && (m.size(1) == 1 || r.s1 % 16 == 0) && (m.size(0) == 1 || r.s0 % 16 == 0) &&
            reinterpret_cast<uintptr_t>(r.data) % 16 == 0;
  return r;
}

// Tensors the kernels read, made contiguous and of dtype T (all but the masks are tiny).
struct SweepInputs {
  at::Tensor ca, co, cq, uy, ux, vy, vx;
};

SweepInputs sweep_inputs(const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& uy,
                         const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx, const at::Tensor& neg_cam) {
  const auto dt = cam_aug.scalar_type();
  return {cam_aug.contiguous(), cam_orig.contiguous(), neg_cam.contiguous(), uy.to(dt).contiguous(),
          ux.to(dt).contiguous(), vy.to(dt).contiguous(), vx.to(dt).contiguous()};
}

template <typename T>
SweepArgs<T> make_args(const SweepInputs& in, const at::Tensor& mask, const at::Tensor& neg_mask, double eps) {
  SweepArgs<T> a;
  a.B = static_cast<int>(in.ca.size(0));
  a.Nq = static_cast<int>(in.cq.size(0));
  a.h = static_cast<int>(in.ca.size(1));
  a.w = static_cast<int>(in.ca.size(2));
  a.H = static_cast<int>(in.uy.size(0));
  a.W = static_cast<int>(in.ux.size(0));
  a.nv = static_cast<int>(in.vy.size(0));
  a.ct_aug = in.ca.const_data_ptr<T>();
  a.ct_orig = in.co.const_data_ptr<T>();
  a.ct_neg = a.Nq > 0 ? in.cq.const_data_ptr<T>() : nullptr;
  a.uy = in.uy.const_data_ptr<T>();
  a.ux = in.ux.const_data_ptr<T>();
  a.vy = in.vy.const_data_ptr<T>();
  a.vx = in.vx.const_data_ptr<T>();
  a.mask = mask_ref(mask);
  a.neg_mask = mask_ref(neg_mask);
  a.eps = static_cast<T>(eps);
  return a;
}

int device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

int multiprocessors() { return device_attribute(cudaDevAttrMultiProcessorCount); }

// Opts the kernel in to `smem` bytes of dynamic shared memory; returns its resident blocks per SM.
template <typename Kernel>
int prepare_kernel(Kernel* kernel, size_t smem) {
  const size_t limit = static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
  TORCH_CHECK(smem <= limit, "contrast_sweep: needs ", smem,
              " bytes of shared memory per block (the maps are too wide), the device allows ", limit);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, smem));
  return std::max(blocks, 1);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int row_chunks(int64_t items, int64_t H) {
  const int sms = multiprocessors();
  return static_cast<int>(
      std::clamp<int64_t>(ceil_div(static_cast<int64_t>(sms) * kRowsBlocksPerSM, items), 1, std::min<int64_t>(H, 65535)));
}

template <typename T>
void sweep_forward(const SweepArgs<T>& a, double* gram, double* pos, double* na, double* np, double* nq,
                   const at::TensorOptions& opts) {
  constexpr int KS = SweepConfig<T>::kStep;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int sms = multiprocessors();
  const bool symmetric = a.Nq == 0;
  const int64_t ntm = ceil_div(a.B, kTileM), ntn = symmetric ? ntm : ceil_div(a.Nq, kTileN);
  const int64_t ntiles = symmetric ? ntm * (ntm + 1) / 2 : ntm * ntn;
  const int64_t steps = static_cast<int64_t>(a.H) * ceil_div(a.W, KS);
  const size_t smem = gram_smem<T>(a.w, a.W).total;
  const int occ = prepare_kernel(sweep_gram_kernel<T>, smem);
  const int64_t nchunks = std::clamp<int64_t>(static_cast<int64_t>(sms) * occ / ntiles, 1, std::min<int64_t>(steps, 65535));
  TORCH_CHECK(ntiles < INT_MAX, "contrast_sweep: batch too large (", a.B, ")");
  at::Tensor part = at::empty({nchunks * ntm * ntn * kTileM * kTileN}, opts.dtype(c10::CppTypeToScalarType<T>::value));
  sweep_gram_kernel<T><<<dim3(static_cast<unsigned>(ntiles), static_cast<unsigned>(nchunks)), kThreads, smem, stream>>>(
      a, static_cast<int>(ntm), static_cast<int>(ntn), static_cast<int>(nchunks), part.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t items = static_cast<int64_t>(a.B) + a.Nq;
  const int nrc = row_chunks(items, a.H);
  at::Tensor rows = at::empty({nrc * items * 3}, opts.dtype(at::kDouble));
  const size_t rsmem = rows_smem<T>(a.h, a.w, a.W, false).total;
  prepare_kernel(sweep_rows_forward_kernel<T>, rsmem);
  sweep_rows_forward_kernel<T><<<dim3(static_cast<unsigned>(items), nrc), kThreads, rsmem, stream>>>(
      a, nrc, rows.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t NQ = symmetric ? a.B : a.Nq;
  const int64_t total = static_cast<int64_t>(a.B) * NQ + 3 * static_cast<int64_t>(a.B) + NQ;
  sweep_stats_finish_kernel<T><<<ceil_div(total, kFinishThreads), kFinishThreads, 0, stream>>>(
      part.const_data_ptr<T>(), rows.const_data_ptr<double>(), a.B, a.Nq, static_cast<int>(ntm), static_cast<int>(ntn),
      static_cast<int>(nchunks), nrc, gram, pos, na, np, nq);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void sweep_backward(const SweepArgs<T>& a, const at::Tensor& caa, const at::Tensor& caq, const at::Tensor& cqa,
                    const at::Tensor& cqq, const at::Tensor& cap, const at::Tensor& cpa, const at::Tensor& cpp,
                    double* grad_aug, double* grad_orig, double* grad_neg, const at::TensorOptions& opts) {
  constexpr int KS = SweepConfig<T>::kStep;
  constexpr auto dtype = c10::CppTypeToScalarType<T>::value;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int sms = multiprocessors();
  const int64_t hw = static_cast<int64_t>(a.h) * a.w;

  FieldsGeometry g;
  g.mt_aug = static_cast<int>(ceil_div(a.B, kTileM));
  g.mt_neg = static_cast<int>(ceil_div(a.Nq, kTileM));
  g.ks_aug = static_cast<int>(ceil_div(static_cast<int64_t>(a.B) + a.Nq, KS));
  g.ks_neg = a.Nq > 0 ? static_cast<int>(ceil_div(a.B, KS)) : 0;
  g.nseg = static_cast<int>(ceil_div(a.W, kTileN));
  g.seglen = static_cast<int>(ceil_div(a.W, g.nseg));

  // Coefficient tiles.
  at::Tensor coef_aug = at::empty({static_cast<int64_t>(g.ks_aug) * KS * g.mt_aug * kTileM}, opts.dtype(dtype));
  at::Tensor flags_aug = at::empty({static_cast<int64_t>(g.mt_aug) * g.ks_aug}, opts.dtype(at::kInt));
  at::Tensor coef_neg = at::empty({std::max<int64_t>(1, static_cast<int64_t>(g.ks_neg) * KS * g.mt_neg * kTileM)},
                                  opts.dtype(dtype));
  at::Tensor flags_neg = at::empty({std::max<int64_t>(1, static_cast<int64_t>(g.mt_neg) * g.ks_neg)}, opts.dtype(at::kInt));
  {
    const dim3 grid(static_cast<unsigned>(std::max(g.ks_aug, g.ks_neg)), static_cast<unsigned>(std::max(g.mt_aug, g.mt_neg)),
                    a.Nq > 0 ? 2 : 1);
    sweep_coef_kernel<T><<<grid, kThreads, 0, stream>>>(
        caa.const_data_ptr<double>(), caq.const_data_ptr<double>(), cqa.const_data_ptr<double>(), a.B, a.Nq,
        coef_aug.mutable_data_ptr<T>(), flags_aug.mutable_data_ptr<int>(), g.mt_aug, g.ks_aug,
        coef_neg.mutable_data_ptr<T>(), flags_neg.mutable_data_ptr<int>(), g.mt_neg, g.ks_neg);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Diagonal terms, per sample.
  const int64_t items = static_cast<int64_t>(a.B) + a.Nq;
  const int nrc = row_chunks(items, a.H);
  at::Tensor rows_aug = at::empty({nrc * static_cast<int64_t>(a.B) * hw}, opts.dtype(dtype));
  at::Tensor rows_orig = at::empty({nrc * static_cast<int64_t>(a.B) * hw}, opts.dtype(dtype));
  at::Tensor rows_neg = at::empty({std::max<int64_t>(1, nrc * static_cast<int64_t>(a.Nq) * hw)}, opts.dtype(dtype));
  {
    const size_t smem = rows_smem<T>(a.h, a.w, a.W, true).total;
    prepare_kernel(sweep_rows_backward_kernel<T>, smem);
    sweep_rows_backward_kernel<T><<<dim3(static_cast<unsigned>(items), nrc), kThreads, smem, stream>>>(
        a, nrc, caa.const_data_ptr<double>(), cap.const_data_ptr<double>(), cpa.const_data_ptr<double>(),
        cpp.const_data_ptr<double>(), cqq.const_data_ptr<double>(), rows_aug.mutable_data_ptr<T>(),
        rows_orig.mutable_data_ptr<T>(), rows_neg.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Off-diagonal terms: the field GEMM.
  const int max_steps = std::max(g.ks_aug, g.ks_neg);
  size_t smem = fields_smem<T>(a.h, a.w, a.W, max_steps, true).total;
  g.grid_in_smem = smem <= kFieldGridSmemBudget;
  if (!g.grid_in_smem) smem = fields_smem<T>(a.h, a.w, a.W, max_steps, false).total;
  const int occ = prepare_kernel(sweep_fields_kernel<T>, smem);
  const int64_t mtiles = static_cast<int64_t>(g.mt_aug) + g.mt_neg;
  const int64_t tiles = static_cast<int64_t>(a.H) * g.nseg;
  g.nchunks = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(sms) * occ / mtiles, 1, std::min<int64_t>(tiles, INT_MAX)));
  TORCH_CHECK(mtiles <= 65535, "contrast_sweep_backward: batch too large (", a.B, " + ", a.Nq, ")");
  at::Tensor fields = at::empty({g.nchunks * items * hw}, opts.dtype(dtype));
  sweep_fields_kernel<T><<<dim3(static_cast<unsigned>(g.nchunks), static_cast<unsigned>(mtiles)), kThreads, smem, stream>>>(
      a, g, coef_aug.const_data_ptr<T>(), flags_aug.const_data_ptr<int>(), coef_neg.const_data_ptr<T>(),
      flags_neg.const_data_ptr<int>(), fields.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t total = (2 * static_cast<int64_t>(a.B) + a.Nq) * hw;
  sweep_grads_finish_kernel<T><<<ceil_div(total, kFinishThreads), kFinishThreads, 0, stream>>>(
      fields.const_data_ptr<T>(), g.nchunks, rows_aug.const_data_ptr<T>(), rows_orig.const_data_ptr<T>(),
      rows_neg.const_data_ptr<T>(), nrc, a.B, a.Nq, static_cast<int>(hw), grad_aug, grad_orig, grad_neg);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_sweep_cuda(
    const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& mask, const at::Tensor& uy,
    const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx, const at::Tensor& neg_cam,
    const at::Tensor& neg_mask, double eps) {
  check_sweep_inputs_cuda(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask);
  const c10::cuda::OptionalCUDAGuard guard(cam_aug.device());
  const SweepInputs in = sweep_inputs(cam_aug, cam_orig, uy, ux, vy, vx, neg_cam);
  const int64_t B = in.ca.size(0), Nq = in.cq.size(0), NQ = Nq > 0 ? Nq : B;
  auto opts = in.ca.options().dtype(at::kDouble);
  at::Tensor gram = at::empty({B, NQ}, opts), pos = at::empty({B}, opts), na = at::empty({B}, opts),
             np = at::empty({B}, opts), nq = at::empty({NQ}, opts);
  if (B == 0) return {gram, pos, na, np, nq};
  if (in.uy.size(0) == 0 || in.ux.size(0) == 0) {  // no pixels: every inner product is 0
    for (at::Tensor* t : {&gram, &pos, &na, &np, &nq}) t->zero_();
    return {gram, pos, na, np, nq};
  }
  AT_DISPATCH_FLOATING_TYPES(in.ca.scalar_type(), "contrast_sweep_cuda", [&] {
    const SweepArgs<scalar_t> a = make_args<scalar_t>(in, mask, neg_mask, eps);
    sweep_forward<scalar_t>(a, gram.mutable_data_ptr<double>(), pos.mutable_data_ptr<double>(),
                            na.mutable_data_ptr<double>(), np.mutable_data_ptr<double>(),
                            nq.mutable_data_ptr<double>(), in.ca.options());
  });
  return {gram, pos, na, np, nq};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrast_sweep_backward_cuda(
    const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& mask, const at::Tensor& uy,
    const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx, const at::Tensor& neg_cam,
    const at::Tensor& neg_mask, double eps, const at::Tensor& coef_aa, const at::Tensor& coef_aq,
    const at::Tensor& coef_qa, const at::Tensor& coef_qq, const at::Tensor& coef_ap, const at::Tensor& coef_pa,
    const at::Tensor& coef_pp) {
  check_sweep_inputs_cuda(cam_aug, cam_orig, mask, uy, ux, vy, vx, neg_cam, neg_mask);
  const c10::cuda::OptionalCUDAGuard guard(cam_aug.device());
  const SweepInputs in = sweep_inputs(cam_aug, cam_orig, uy, ux, vy, vx, neg_cam);
  const int64_t B = in.ca.size(0), Nq = in.cq.size(0);
  TORCH_CHECK(coef_aa.numel() == B * B && coef_aq.numel() == B * Nq && coef_qa.numel() == Nq * B &&
                  coef_qq.numel() == Nq && coef_ap.numel() == B && coef_pa.numel() == B && coef_pp.numel() == B,
              "contrast_sweep_backward: coefficient shapes do not match B=", B, ", N=", Nq);
  for (const at::Tensor* c : {&coef_aa, &coef_aq, &coef_qa, &coef_qq, &coef_ap, &coef_pa, &coef_pp})
    TORCH_CHECK(c->device() == in.ca.device(), "contrast_sweep_backward: coefficients must be on ", in.ca.device(),
                ", got one on ", c->device());
  auto opts = in.ca.options().dtype(at::kDouble);
  at::Tensor ga = at::empty(in.ca.sizes(), opts), go = at::empty(in.ca.sizes(), opts), gq = at::empty(in.cq.sizes(), opts);
  if (B == 0) return {ga, go, gq};
  if (in.uy.size(0) == 0 || in.ux.size(0) == 0) {
    for (at::Tensor* t : {&ga, &go, &gq}) t->zero_();
    return {ga, go, gq};
  }
  // Float64, contiguous; a one-element placeholder stands in for an empty coefficient tensor.
  auto dense = [&](const at::Tensor& c) {
    return c.numel() > 0 ? c.to(at::kDouble).contiguous() : at::zeros({1}, opts);
  };
  const at::Tensor caa = dense(coef_aa), caq = dense(coef_aq), cqa = dense(coef_qa), cqq = dense(coef_qq),
                   cap = dense(coef_ap), cpa = dense(coef_pa), cpp = dense(coef_pp);
  AT_DISPATCH_FLOATING_TYPES(in.ca.scalar_type(), "contrast_sweep_backward_cuda", [&] {
    const SweepArgs<scalar_t> a = make_args<scalar_t>(in, mask, neg_mask, eps);
    sweep_backward<scalar_t>(a, caa, caq, cqa, cqq, cap, cpa, cpp, ga.mutable_data_ptr<double>(),
                             go.mutable_data_ptr<double>(), gq.mutable_data_ptr<double>(), in.ca.options());
  });
  return {ga, go, gq};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CUDA, m) {
  m.impl("contrast_sweep", &contrast_sweep_cuda);
  m.impl("contrast_sweep_backward", &contrast_sweep_backward_cuda);
}

}  // namespace sgc_fast
