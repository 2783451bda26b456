// The float64 glue of contrast_logits on CUDA (formulas in contrast_glue.h, semantics in sgc_fast/contrast.py;
// same ops as cpu/contrast_glue.cpp). Launches per call: normalise 1, epilogue 1, coefficients 2, unnormalise 1,
// warp_matrices 1, lowres_stats 2, lowres_grads 2
// -- where the plain-PyTorch glue launches ~60 small kernels per forward + backward, whose host-side launch
// cost dominated the loss at B=256 on an H200.
//
// Reductions (per-sample sums, kappa over a Gram row or column) use fixed trees: a block tree in shared memory
// for the per-sample sums, an xor butterfly within one warp for rows and columns. No atomics: results are
// bitwise reproducible run to run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "contrast_glue.h"
#include "glue_checks.h"

#include <algorithm>
#include <tuple>

namespace sgc_fast {
namespace {

constexpr int kSampleThreads = 128;  // one block per sample for the per-sample sums
constexpr int kWarpsPerBlock = 8;    // rows/columns of the coefficient reductions, one warp each
constexpr int kElemThreads = 256;    // elementwise kernels

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline unsigned elem_blocks(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(n, kElemThreads), 1, 8192));
}

// Sum over the block's threads in a fixed order (every thread gets the result).
__device__ double block_sum(double v, double* smem) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = kSampleThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  const double r = smem[0];
  __syncthreads();
  return r;
}

// Sum over the warp's lanes; an xor butterfly gives every lane the same bits (each step adds a commuted pair).
__device__ double warp_sum(double v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

template <typename In, typename Out>
__global__ void normalise_kernel(const In* __restrict__ cam, const double* __restrict__ w, double eps, int64_t n,
                                 Out* __restrict__ ct, double* __restrict__ total) {
  __shared__ double smem[kSampleThreads];
  const int64_t b = blockIdx.x;
  const In* c = cam + b * n;
  double s = 0;
  for (int64_t p = threadIdx.x; p < n; p += kSampleThreads) s += static_cast<double>(c[p]) * w[p];
  s = block_sum(s, smem) + eps;
  if (threadIdx.x == 0) total[b] = s;
  for (int64_t p = threadIdx.x; p < n; p += kSampleThreads) ct[b * n + p] = static_cast<Out>(static_cast<double>(c[p]) / s);
}

template <typename In>
__global__ void unnormalise_kernel(const double* __restrict__ g, const In* __restrict__ cam,
                                   const double* __restrict__ total, const double* __restrict__ w, int64_t n,
                                   In* __restrict__ out) {
  __shared__ double smem[kSampleThreads];
  const int64_t b = blockIdx.x;
  double inner = 0;
  for (int64_t p = threadIdx.x; p < n; p += kSampleThreads) inner += g[b * n + p] * static_cast<double>(cam[b * n + p]);
  const double tb = total[b];
  inner = block_sum(inner, smem) / (tb * tb);
  for (int64_t p = threadIdx.x; p < n; p += kSampleThreads)
    out[b * n + p] = static_cast<In>(g[b * n + p] / tb - inner * w[p]);
}

// Packs the five stats into one buffer and writes the logits (read from the unpacked inputs).
template <typename Out>
__global__ void epilogue_kernel(glue::Stats s, const int64_t* __restrict__ self, bool separate, double t,
                                int64_t ncols, Out* __restrict__ logits, double* __restrict__ packed) {
  const int64_t B = s.B, NQ = s.NQ;
  const int64_t nlogits = B * ncols, npacked = glue::packed_numel(B, NQ);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < nlogits + npacked; e += stride) {
    if (e < nlogits) {
      const int64_t i = e / ncols, c = e - i * ncols;
      logits[e] = static_cast<Out>(glue::logit(s, i, c, separate, self ? self[i] : -1, t));
      continue;
    }
    int64_t k = e - nlogits;
    double v;
    if (k < B * NQ) {
      v = s.gram[k];
    } else if ((k -= B * NQ) < B) {
      v = s.pos[k];
    } else if ((k -= B) < B) {
      v = s.na[k];
    } else if ((k -= B) < B) {
      v = s.np[k];
    } else {
      v = s.nq[k - B];
    }
    packed[e - nlogits] = v;
  }
}

// One warp per Gram row i (warps 0..B-1): kappa_a_i, then c_aa[i,i], c_ap[i], c_pp[i]; with separate negatives
// one warp per column k (warps B..B+N-1): kappa_q_k, then c_qq[k].
template <typename G>
__global__ void coef_reduce_kernel(glue::Stats s, const G* __restrict__ g, int64_t ncols,
                                   const int64_t* __restrict__ self, bool separate, double t,
                                   double* __restrict__ caa, double* __restrict__ cap, double* __restrict__ cpp,
                                   double* __restrict__ cqq) {
  const int64_t B = s.B, N = separate ? s.NQ : 0;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (item >= B + N) return;  // whole warps leave together: the shuffles below see full warps
  double kappa = 0;
  if (item < B) {
    const int64_t i = item, self_i = self ? self[i] : -1;
    for (int64_t j = lane; j < s.NQ; j += 32) kappa += glue::kappa_a_term(s, g, ncols, i, j, separate, self_i, t);
    kappa = warp_sum(kappa);
    if (lane == 0) glue::row_coefs(s, g, ncols, i, kappa, t, separate, &caa[i * B + i], &cap[i], &cpp[i]);
  } else {
    const int64_t k = item - B;
    for (int64_t i = lane; i < B; i += 32) kappa += glue::kappa_q_term(s, g, ncols, i, k, self ? self[i] : -1, t);
    kappa = warp_sum(kappa);
    if (lane == 0) cqq[k] = glue::coef_qq(s, k, kappa);
  }
}

// Off-diagonal c_aa (zero with separate negatives), c_aq and its transpose c_qa.
template <typename G>
__global__ void coef_fill_kernel(glue::Stats s, const G* __restrict__ g, int64_t ncols,
                                 const int64_t* __restrict__ self, bool separate, double t, double* __restrict__ caa,
                                 double* __restrict__ caq, double* __restrict__ cqa) {
  const int64_t B = s.B, N = separate ? s.NQ : 0;
  const int64_t naa = B * B, total = naa + B * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    if (e < naa) {
      const int64_t i = e / B, j = e - i * B;
      if (i != j) caa[e] = separate ? 0.0 : glue::coef_aa_offdiag(s, g, ncols, i, j, t);
    } else {
      const int64_t f = e - naa, i = f / N, k = f - i * N;
      const double v = glue::coef_aq(s, g, ncols, i, k, self ? self[i] : -1, t);
      caq[f] = v;
      cqa[k * B + i] = v;
    }
  }
}

// Entries of Vy [B, H, h] then Vx [B, W, w], one thread per entry (grid-stride).
__global__ void warp_kernel(const int64_t* __restrict__ crop, const bool* __restrict__ flip, int64_t B, int64_t H,
                            int64_t W, int64_t h, int64_t w, double* __restrict__ vy, double* __restrict__ vx) {
  const int64_t ny = B * H * h, total = ny + B * W * w;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    if (e < ny) {
      const int64_t y = e % h, r = (e / h) % H, b = e / (h * H);
      vy[e] = glue::warp_entry(r, y, H, h, crop[4 * b], crop[4 * b + 2]);
    } else {
      const int64_t f = e - ny, x = f % w, r = (f / w) % W, b = f / (w * W);
      const int64_t src = flip[b] ? W - 1 - r : r;  // a mirrored crop reads its rows backwards
      vx[f] = glue::warp_entry(src, x, W, w, crop[4 * b + 1], crop[4 * b + 3]);
    }
  }
}

// ---- Unmasked (CGC) closed forms: one block per sample (and per separate negative), phases split by barriers;
// global scratch t holds the left factors (P c) of the separable products, which the block reads back after
// __syncthreads (which orders global memory within the block).
struct LowresIn {
  const double *ca, *co, *cq, *uy, *ux, *vy, *vx, *my, *mx, *wt;
  double eps, tail;
  int64_t B, N, h, w, H, W;
  bool warped;
};

struct LowresOut {
  double *m, *uv, *vv, *col, *ay, *ax, *cy, *cx, *cs, *t, *r, *pos, *na, *np, *nq;  // cs: [B, h + w] column sums
};

__global__ void lowres_prep_kernel(LowresIn in, LowresOut out) {
  __shared__ double smem[kSampleThreads];
  const int64_t item = blockIdx.x, h = in.h, w = in.w, hw = h * w, B = in.B;
  double* t = out.t + item * 3 * hw;
  if (item >= B) {  // a separate negative: M c, its total and squared norm (uniform branch: one block, one item)
    const int64_t k = item - B;
    const double* c = in.cq + k * hw;
    for (int64_t e = threadIdx.x; e < hw; e += kSampleThreads) t[e] = glue::left_entry(in.my, c, h, w, e / w, e % w, false);
    __syncthreads();
    double dot = 0.0, rr = 0.0;
    for (int64_t e = threadIdx.x; e < hw; e += kSampleThreads) {
      const double v = glue::right_entry(t, in.mx, w, e / w, e % w, false);
      out.m[item * hw + e] = v;
      dot += c[e] * v;
      rr += c[e] * in.wt[e];
    }
    dot = block_sum(dot, smem);
    rr = block_sum(rr, smem);
    if (threadIdx.x == 0) {
      out.r[item] = rr;
      out.nq[k] = dot + 2 * in.eps * rr + in.tail;
    }
    return;
  }
  const int64_t i = item;
  const double* vyi = in.vy + (in.warped ? i : 0) * in.H * h;
  const double* vxi = in.vx + (in.warped ? i : 0) * in.W * w;
  double *ayi = out.ay + i * h * h, *axi = out.ax + i * w * w, *cyi = out.cy + i * h * h, *cxi = out.cx + i * w * w;
  for (int64_t e = threadIdx.x; e < h * h; e += kSampleThreads) {
    ayi[e] = glue::gram_entry(in.uy, vyi, in.H, h, h, e / h, e % h);
    cyi[e] = glue::gram_entry(vyi, vyi, in.H, h, h, e / h, e % h);
  }
  for (int64_t e = threadIdx.x; e < w * w; e += kSampleThreads) {
    axi[e] = glue::gram_entry(in.ux, vxi, in.W, w, w, e / w, e % w);
    cxi[e] = glue::gram_entry(vxi, vxi, in.W, w, w, e / w, e % w);
  }
  double* csi = out.cs + i * (h + w);  // Vy_i^T 1 then Vx_i^T 1
  for (int64_t e = threadIdx.x; e < h + w; e += kSampleThreads)
    csi[e] = e < h ? glue::col_sum(vyi, in.H, h, e) : glue::col_sum(vxi, in.W, w, e - h);
  __syncthreads();
  const double* c_aug = in.ca + i * hw;
  const double* c_orig = in.co + i * hw;
  for (int64_t e = threadIdx.x; e < hw; e += kSampleThreads) {
    const int64_t a = e / w, b = e % w;
    t[e] = glue::left_entry(in.my, c_aug, h, w, a, b, false);
    t[hw + e] = glue::left_entry(ayi, c_orig, h, w, a, b, false);
    t[2 * hw + e] = glue::left_entry(cyi, c_orig, h, w, a, b, false);
  }
  __syncthreads();
  double s_r = 0.0, s_rho = 0.0, s_pos = 0.0, s_na = 0.0, s_np = 0.0;
  for (int64_t e = threadIdx.x; e < hw; e += kSampleThreads) {
    const int64_t a = e / w, b = e % w;
    const double mv = glue::right_entry(t, in.mx, w, a, b, false);
    const double uvv = glue::right_entry(t + hw, axi, w, a, b, false);
    const double vvv = glue::right_entry(t + 2 * hw, cxi, w, a, b, false);
    const double cl = csi[a] * csi[h + b];
    out.m[i * hw + e] = mv;
    out.uv[i * hw + e] = uvv;
    out.vv[i * hw + e] = vvv;
    out.col[i * hw + e] = cl;
    s_r += c_aug[e] * in.wt[e];
    s_rho += c_orig[e] * cl;
    s_pos += c_aug[e] * uvv;
    s_na += c_aug[e] * mv;
    s_np += c_orig[e] * vvv;
  }
  s_r = block_sum(s_r, smem);
  s_rho = block_sum(s_rho, smem);
  s_pos = block_sum(s_pos, smem);
  s_na = block_sum(s_na, smem);
  s_np = block_sum(s_np, smem);
  if (threadIdx.x == 0) {
    out.r[i] = s_r;
    out.pos[i] = s_pos + in.eps * (s_r + s_rho) + in.tail;
    out.na[i] = s_na + 2 * in.eps * s_r + in.tail;
    out.np[i] = s_np + 2 * in.eps * s_rho + in.tail;
  }
}

// Gram entries (B x NQ), then, without separate negatives, |q|^2 = |a|^2.
__global__ void lowres_gram_kernel(LowresIn in, const double* __restrict__ m, const double* __restrict__ r,
                                   const double* __restrict__ na, double* __restrict__ gram, double* __restrict__ nq) {
  const int64_t B = in.B, N = in.N, hw = in.h * in.w, NQ = N > 0 ? N : B;
  const double* cols = N > 0 ? in.cq : in.ca;
  const double* rc = N > 0 ? r + B : r;
  const int64_t total = B * NQ + (N > 0 ? 0 : B);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    if (e >= B * NQ) {
      nq[e - B * NQ] = na[e - B * NQ];
      continue;
    }
    const int64_t i = e / NQ, j = e - i * NQ;
    double dot = 0.0;
    for (int64_t p = 0; p < hw; ++p) dot += m[i * hw + p] * cols[j * hw + p];
    gram[e] = dot + in.eps * (r[i] + rc[j]) + in.tail;
  }
}

struct LowresGradIn {
  const double *ca, *m, *uv, *vv, *col, *ay, *ax, *wt, *caa, *caq, *cqa, *cqq, *cap, *cpa, *cpp;
  double eps;
  int64_t B, N, h, w;
};

// g_orig_i = c_pa_i (Ay^T c_aug_i Ax + eps col_i) + c_pp_i (vv_i + eps col_i), one block per sample.
__global__ void lowres_orig_grad_kernel(LowresGradIn in, double* __restrict__ t, double* __restrict__ g_orig) {
  const int64_t i = blockIdx.x, h = in.h, w = in.w, hw = h * w;
  double* ti = t + i * hw;
  const double* ayi = in.ay + i * h * h;
  for (int64_t e = threadIdx.x; e < hw; e += kSampleThreads)
    ti[e] = glue::left_entry(ayi, in.ca + i * hw, h, w, e / w, e % w, true);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < hw; e += kSampleThreads) {
    const double vt = glue::right_entry(ti, in.ax + i * w * w, w, e / w, e % w, true);
    const double e1 = in.eps * in.col[i * hw + e];
    g_orig[i * hw + e] = in.cpa[i] * (vt + e1) + in.cpp[i] * (in.vv[i * hw + e] + e1);
  }
}

// g_aug (B x hw) then g_neg (N x hw): the coefficient matrices applied to U^T a_j = M c_j + eps w and
// U^T q_k = M c_neg_k + eps w.
__global__ void lowres_aug_grad_kernel(LowresGradIn in, double* __restrict__ g_aug, double* __restrict__ g_neg) {
  const int64_t B = in.B, N = in.N, hw = in.h * in.w;
  const int64_t total = (B + N) * hw;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const int64_t row = e / hw, p = e - row * hw;
    const double ew = in.eps * in.wt[p];
    if (row < B) {
      const int64_t i = row;
      double s = 0.0;
      for (int64_t j = 0; j < B; ++j) s += in.caa[i * B + j] * (in.m[j * hw + p] + ew);
      s += in.cap[i] * (in.uv[i * hw + p] + ew);
      double sq = 0.0;
      for (int64_t k = 0; k < N; ++k) sq += in.caq[i * N + k] * (in.m[(B + k) * hw + p] + ew);
      g_aug[e] = N > 0 ? s + sq : s;
    } else {
      const int64_t k = row - B;
      double s = 0.0;
      for (int64_t i = 0; i < B; ++i) s += in.cqa[k * B + i] * (in.m[i * hw + p] + ew);
      g_neg[k * hw + p] = s + in.cqq[k] * (in.m[(B + k) * hw + p] + ew);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> contrast_normalise_cuda(const at::Tensor& cam_in, const at::Tensor& weight_in,
                                                           double eps, at::ScalarType dtype) {
  check_normalise(cam_in, weight_in, dtype);
  const c10::cuda::OptionalCUDAGuard guard(cam_in.device());
  const at::Tensor cam = cam_in.contiguous(), weight = weight_in.contiguous();
  const int64_t B = cam.size(0), n = cam.size(1) * cam.size(2);
  at::Tensor ct = at::empty(cam.sizes(), cam.options().dtype(dtype));
  at::Tensor total = at::empty({B}, cam.options().dtype(at::kDouble));
  if (B == 0) return {ct, total};
  TORCH_CHECK(B <= INT32_MAX, "cam: batch too large (", B, ")");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "contrast_normalise_cuda", [&] {
    const scalar_t* c = cam.const_data_ptr<scalar_t>();
    if (dtype == at::kDouble)
      normalise_kernel<scalar_t, double><<<static_cast<unsigned>(B), kSampleThreads, 0, stream>>>(
          c, weight.const_data_ptr<double>(), eps, n, ct.mutable_data_ptr<double>(), total.mutable_data_ptr<double>());
    else
      normalise_kernel<scalar_t, float><<<static_cast<unsigned>(B), kSampleThreads, 0, stream>>>(
          c, weight.const_data_ptr<double>(), eps, n, ct.mutable_data_ptr<float>(), total.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ct, total};
}

std::tuple<at::Tensor, at::Tensor> contrast_epilogue_cuda(const at::Tensor& gram_in, const at::Tensor& pos_in,
                                                          const at::Tensor& na_in, const at::Tensor& np_in,
                                                          const at::Tensor& nq_in,
                                                          const c10::optional<at::Tensor>& self_index, bool separate,
                                                          double temperature, at::ScalarType dtype) {
  const int64_t NQ = check_epilogue(gram_in, pos_in, na_in, np_in, nq_in, self_index, separate, temperature, dtype);
  const c10::cuda::OptionalCUDAGuard guard(gram_in.device());
  const at::Tensor gram = gram_in.contiguous(), pos = pos_in.contiguous(), na = na_in.contiguous(),
                   np = np_in.contiguous(), nq = nq_in.contiguous();
  const int64_t B = gram.size(0), ncols = separate ? 1 + NQ : B;
  at::Tensor packed = at::empty({glue::packed_numel(B, NQ)}, gram.options());
  at::Tensor logits = at::empty({B, ncols}, gram.options().dtype(dtype));
  if (glue::packed_numel(B, NQ) == 0) return {logits, packed};  // (B = 0 with negatives still packs |q|^2)
  glue::Stats s{gram.const_data_ptr<double>(), pos.const_data_ptr<double>(), na.const_data_ptr<double>(),
                np.const_data_ptr<double>(), nq.const_data_ptr<double>(), B, NQ};
  const at::Tensor self = self_index_long(self_index);
  const int64_t* self_p = self.defined() ? self.const_data_ptr<int64_t>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = elem_blocks(B * ncols + glue::packed_numel(B, NQ));
  AT_DISPATCH_FLOATING_TYPES(dtype, "contrast_epilogue_cuda", [&] {
    epilogue_kernel<scalar_t><<<blocks, kElemThreads, 0, stream>>>(
        s, self_p, separate, temperature, ncols, logits.mutable_data_ptr<scalar_t>(), packed.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {logits, packed};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_coefficients_cuda(
    const at::Tensor& packed_in, const at::Tensor& grad_in, const c10::optional<at::Tensor>& self_index, bool separate,
    double temperature) {
  const int64_t NQ = check_coefficients(packed_in, grad_in, self_index, separate, temperature);
  const c10::cuda::OptionalCUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = grad.size(0), ncols = grad.size(1), N = separate ? NQ : 0;
  const auto opts = packed.options();
  at::Tensor caa = at::empty({B, B}, opts), caq = at::empty({B, N}, opts), cqa = at::empty({N, B}, opts),
             cqq = at::empty({N}, opts), cap = at::empty({B}, opts), cpp = at::empty({B}, opts);
  if (B + N == 0) return {caa, caq, cqa, cqq, cap, cpp};  // (B = 0 with negatives still writes c_qq)
  const glue::Stats s = glue::unpack(packed.const_data_ptr<double>(), B, NQ);
  const at::Tensor self = self_index_long(self_index);
  const int64_t* self_p = self.defined() ? self.const_data_ptr<int64_t>() : nullptr;
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t items = B + N;
  TORCH_CHECK(ceil_div(items, kWarpsPerBlock) <= INT32_MAX, "grad_logits: batch too large (", B, ")");
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "contrast_coefficients_cuda", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    coef_reduce_kernel<scalar_t><<<static_cast<unsigned>(ceil_div(items, kWarpsPerBlock)), kWarpsPerBlock * 32, 0,
                                   stream>>>(s, g, ncols, self_p, separate, temperature, caa.mutable_data_ptr<double>(),
                                             cap.mutable_data_ptr<double>(), cpp.mutable_data_ptr<double>(),
                                             cqq.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    coef_fill_kernel<scalar_t><<<elem_blocks(B * B + B * N), kElemThreads, 0, stream>>>(
        s, g, ncols, self_p, separate, temperature, caa.mutable_data_ptr<double>(), caq.mutable_data_ptr<double>(),
        cqa.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {caa, caq, cqa, cqq, cap, cpp};
}

at::Tensor contrast_unnormalise_cuda(const at::Tensor& grad_in, const at::Tensor& cam_in, const at::Tensor& total_in,
                                     const at::Tensor& weight_in) {
  check_unnormalise(grad_in, cam_in, total_in, weight_in);
  const c10::cuda::OptionalCUDAGuard guard(cam_in.device());
  const at::Tensor grad = grad_in.contiguous(), cam = cam_in.contiguous(), total = total_in.contiguous(),
                   weight = weight_in.contiguous();
  const int64_t B = cam.size(0), n = cam.size(1) * cam.size(2);
  at::Tensor out = at::empty(cam.sizes(), cam.options());
  if (B == 0) return out;
  TORCH_CHECK(B <= INT32_MAX, "cam: batch too large (", B, ")");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "contrast_unnormalise_cuda", [&] {
    unnormalise_kernel<scalar_t><<<static_cast<unsigned>(B), kSampleThreads, 0, stream>>>(
        grad.const_data_ptr<double>(), cam.const_data_ptr<scalar_t>(), total.const_data_ptr<double>(),
        weight.const_data_ptr<double>(), n, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_matrices_cuda(const at::Tensor& crop_in, const at::Tensor& flip_in, int64_t H,
                                                      int64_t W, int64_t h, int64_t w) {
  check_warp(crop_in, flip_in, H, W, h, w);
  const c10::cuda::OptionalCUDAGuard guard(crop_in.device());
  const at::Tensor crop = crop_in.to(at::kLong).contiguous(), flip = flip_in.contiguous();
  const int64_t B = crop.size(0);
  const auto opts = crop.options().dtype(at::kDouble);
  at::Tensor vy = at::empty({B, H, h}, opts), vx = at::empty({B, W, w}, opts);
  if (B == 0) return {vy, vx};
  auto stream = at::cuda::getCurrentCUDAStream();
  warp_kernel<<<elem_blocks(B * (H * h + W * w)), kElemThreads, 0, stream>>>(
      crop.const_data_ptr<int64_t>(), flip.const_data_ptr<bool>(), B, H, W, h, w, vy.mutable_data_ptr<double>(),
      vx.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {vy, vx};
}

using LowresStats = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

LowresStats contrast_lowres_stats_cuda(const at::Tensor& ct_aug, const at::Tensor& ct_orig, const at::Tensor& ct_neg,
                                       const at::Tensor& uy_in, const at::Tensor& ux_in, const at::Tensor& vy_in,
                                       const at::Tensor& vx_in, const at::Tensor& my_in, const at::Tensor& mx_in,
                                       const at::Tensor& weight, double eps) {
  check_lowres(ct_aug, ct_orig, ct_neg, uy_in, ux_in, vy_in, vx_in, my_in, mx_in, weight);
  const c10::cuda::OptionalCUDAGuard guard(ct_aug.device());
  const at::Tensor ca = ct_aug.contiguous(), co = ct_orig.contiguous(), cq = ct_neg.contiguous(),
                   uy = uy_in.contiguous(), ux = ux_in.contiguous(), vy = vy_in.contiguous(), vx = vx_in.contiguous(),
                   my = my_in.contiguous(), mx = mx_in.contiguous(), wt = weight.contiguous();
  const int64_t B = ca.size(0), h = ca.size(1), w = ca.size(2), N = cq.size(0), H = uy.size(0), W = ux.size(0);
  const int64_t hw = h * w, NQ = N > 0 ? N : B;
  const auto opts = ca.options();
  at::Tensor gram = at::empty({B, NQ}, opts), pos = at::empty({B}, opts), na = at::empty({B}, opts),
             np = at::empty({B}, opts), nq = at::empty({NQ}, opts), m = at::empty({B + N, h, w}, opts),
             uv = at::empty({B, h, w}, opts), vv = at::empty({B, h, w}, opts), col = at::empty({B, h, w}, opts),
             ay = at::empty({B, h, h}, opts), ax = at::empty({B, w, w}, opts);
  if (B + N == 0) return {gram, pos, na, np, nq, m, uv, vv, col, ay, ax};
  TORCH_CHECK(B + N <= INT32_MAX, "ct_aug: batch too large (", B + N, ")");
  at::Tensor cy = at::empty({std::max<int64_t>(B, 1), h, h}, opts), cx = at::empty({std::max<int64_t>(B, 1), w, w}, opts),
             cs = at::empty({std::max<int64_t>(B, 1), h + w}, opts), t = at::empty({B + N, 3, hw}, opts),
             r = at::empty({B + N}, opts);
  const LowresIn in{ca.const_data_ptr<double>(), co.const_data_ptr<double>(), cq.const_data_ptr<double>(),
                    uy.const_data_ptr<double>(), ux.const_data_ptr<double>(), vy.const_data_ptr<double>(),
                    vx.const_data_ptr<double>(), my.const_data_ptr<double>(), mx.const_data_ptr<double>(),
                    wt.const_data_ptr<double>(), eps, eps * eps * static_cast<double>(H * W), B, N, h, w, H, W,
                    vy.size(0) > 1};
  const LowresOut out{m.mutable_data_ptr<double>(), uv.mutable_data_ptr<double>(), vv.mutable_data_ptr<double>(),
                      col.mutable_data_ptr<double>(), ay.mutable_data_ptr<double>(), ax.mutable_data_ptr<double>(),
                      cy.mutable_data_ptr<double>(), cx.mutable_data_ptr<double>(), cs.mutable_data_ptr<double>(),
                      t.mutable_data_ptr<double>(),
                      r.mutable_data_ptr<double>(), pos.mutable_data_ptr<double>(), na.mutable_data_ptr<double>(),
                      np.mutable_data_ptr<double>(), nq.mutable_data_ptr<double>()};
  auto stream = at::cuda::getCurrentCUDAStream();
  lowres_prep_kernel<<<static_cast<unsigned>(B + N), kSampleThreads, 0, stream>>>(in, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t total = B * NQ + (N > 0 ? 0 : B);
  if (total > 0) {
    lowres_gram_kernel<<<elem_blocks(total), kElemThreads, 0, stream>>>(
        in, m.const_data_ptr<double>(), r.const_data_ptr<double>(), na.const_data_ptr<double>(),
        gram.mutable_data_ptr<double>(), nq.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {gram, pos, na, np, nq, m, uv, vv, col, ay, ax};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrast_lowres_grads_cuda(
    const at::Tensor& ct_aug, const at::Tensor& m_in, const at::Tensor& uv_in, const at::Tensor& vv_in,
    const at::Tensor& col_in, const at::Tensor& ay_in, const at::Tensor& ax_in, const at::Tensor& weight, double eps,
    const at::Tensor& caa_in, const at::Tensor& caq_in, const at::Tensor& cqa_in, const at::Tensor& cqq_in,
    const at::Tensor& cap_in, const at::Tensor& cpa_in, const at::Tensor& cpp_in) {
  check_lowres_grads(ct_aug, m_in, uv_in, vv_in, col_in, ay_in, ax_in, weight, caa_in, caq_in, cqa_in, cqq_in, cap_in,
                     cpa_in, cpp_in);
  const c10::cuda::OptionalCUDAGuard guard(ct_aug.device());
  auto c = [](const at::Tensor& x) { return x.contiguous(); };
  const at::Tensor ca = c(ct_aug), m = c(m_in), uv = c(uv_in), vv = c(vv_in), col = c(col_in), ay = c(ay_in),
                   ax = c(ax_in), wt = c(weight), caa = c(caa_in), caq = c(caq_in), cqa = c(cqa_in), cqq = c(cqq_in),
                   cap = c(cap_in), cpa = c(cpa_in), cpp = c(cpp_in);
  const int64_t B = ca.size(0), h = ca.size(1), w = ca.size(2), N = m.size(0) - B, hw = h * w;
  const auto opts = ca.options();
  at::Tensor g_aug = at::empty({B, h, w}, opts), g_orig = at::empty({B, h, w}, opts), g_neg = at::empty({N, h, w}, opts);
  if (B + N == 0 || hw == 0) return {g_aug, g_orig, g_neg};
  const LowresGradIn in{ca.const_data_ptr<double>(), m.const_data_ptr<double>(), uv.const_data_ptr<double>(),
                        vv.const_data_ptr<double>(), col.const_data_ptr<double>(), ay.const_data_ptr<double>(),
                        ax.const_data_ptr<double>(), wt.const_data_ptr<double>(), caa.const_data_ptr<double>(),
                        caq.const_data_ptr<double>(), cqa.const_data_ptr<double>(), cqq.const_data_ptr<double>(),
                        cap.const_data_ptr<double>(), cpa.const_data_ptr<double>(), cpp.const_data_ptr<double>(),
                        eps, B, N, h, w};
  auto stream = at::cuda::getCurrentCUDAStream();
  if (B > 0) {
    TORCH_CHECK(B <= INT32_MAX, "ct_aug: batch too large (", B, ")");
    at::Tensor t = at::empty({B, hw}, opts);
    lowres_orig_grad_kernel<<<static_cast<unsigned>(B), kSampleThreads, 0, stream>>>(
        in, t.mutable_data_ptr<double>(), g_orig.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  lowres_aug_grad_kernel<<<elem_blocks((B + N) * hw), kElemThreads, 0, stream>>>(in, g_aug.mutable_data_ptr<double>(),
                                                                                 g_neg.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {g_aug, g_orig, g_neg};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CUDA, m) {
  m.impl("contrast_normalise", &contrast_normalise_cuda);
  m.impl("contrast_epilogue", &contrast_epilogue_cuda);
  m.impl("contrast_coefficients", &contrast_coefficients_cuda);
  m.impl("contrast_unnormalise", &contrast_unnormalise_cuda);
  m.impl("warp_matrices", &warp_matrices_cuda);
  m.impl("contrast_lowres_stats", &contrast_lowres_stats_cuda);
  m.impl("contrast_lowres_grads", &contrast_lowres_grads_cuda);
}

}  // namespace sgc_fast
