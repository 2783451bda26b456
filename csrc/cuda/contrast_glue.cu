// The float64 glue of contrast_logits on CUDA (formulas in contrast_glue.h, semantics in sgc_fast/contrast.py;
// same ops as cpu/contrast_glue.cpp). Launches per call: normalise 1, epilogue 1, coefficients 2, unnormalise 1,
// warp_matrices 1
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

at::Tensor self_index_long(const c10::optional<at::Tensor>& self_index) {
  return self_index.has_value() ? self_index->to(at::kLong).contiguous() : at::Tensor();
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

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CUDA, m) {
  m.impl("contrast_normalise", &contrast_normalise_cuda);
  m.impl("contrast_epilogue", &contrast_epilogue_cuda);
  m.impl("contrast_coefficients", &contrast_coefficients_cuda);
  m.impl("contrast_unnormalise", &contrast_unnormalise_cuda);
  m.impl("warp_matrices", &warp_matrices_cuda);
}

}  // namespace sgc_fast
