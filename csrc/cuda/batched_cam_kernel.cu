// batched_cam on CUDA: forward and backward (same op semantics as cpu/batched_cam_kernel.cpp).
//
// Computes, for every sample b and position p of the h x w grid,
//   kind "hires": cam[b,p] = relu( sum_k grads[b,k,p] * feats[b,k,p] )
//   kind "grad" : cam[b,p] = relu( sum_k alpha[b,k] * feats[b,k,p] ),  alpha = mean_p grads[b,k,p]
// `grads` is [B,K,h,w] (any strides) or the compact [B,K] form of a spatially constant gradient (what
// head_grads produces); then both kinds coincide and the backward writes the [B,K] gradient directly,
// so no full-size dG is ever written. Arithmetic in float for fp16/bf16/fp32, double if either input
// is double; relu keeps NaN (z < 0 ? 0 : z), like the CPU kernel.
//
// Layout of the fast ("flat") kernels. When a sample's [K,h,w] block is contiguous and 16-byte aligned,
// it is one stream of K*hw elements read with 16-byte vectors (VEC elements). A block of T threads
// walks it in strides of VEC*T elements, and T is chosen so that VEC*T is a multiple of hw: then every
// vector a thread touches covers the same VEC positions (p = (VEC*t + j) mod hw), so the thread keeps
// VEC position accumulators in registers and needs no per-element index arithmetic. h*w = 49 with
// VEC = 4 gives T = 245 (5 x 49), 20 channels per stride. Each block owns one sample and a contiguous
// chunk of channels (the grid is B x splits, splits chosen to fill the GPU); partial sums of a block
// are reduced over threads in a fixed order through shared memory, and partial sums of the splits in a
// fixed order by a second tiny kernel. No atomics: results are bitwise reproducible run to run.
// Other layouts (channels-last, sliced, misaligned) take "strided" kernels with scalar loads and the
// same reduction order rules.
//
// Backward: dz = grad_cam where cam > 0 (else 0), read per position from cam/grad_cam directly.
//   per-position grads: dA = G dz, dG = A dz -- one elementwise pass, vectorised like the forward.
//   channel weights   : dA = alpha dz (vectorised), dalpha[b,k] = sum_p A dz: the block stages A*dz of
//                       U*20 channels in shared memory and reduces each channel row with one warp
//                       (lanes over positions, xor butterfly); compact grads get dG = dalpha ([B,K]),
//                       kind "grad" with full grads gets dG[b,k,p] = dalpha / hw.
//   kind "grad" with full grads first computes alpha with one warp per (b,k) row.
// Bytes (B=256, K=2048, 7x7, fp32: one tensor = 103 MB): forward reads A and G once (206 MB; compact
// grads: 103 MB + 2 MB), writes B*hw. Backward reads A, G and writes dA, dG once (412 MB; compact:
// reads A, writes dA, 206 MB). FLOPs are negligible (2 per element): this op is bandwidth bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "op_checks.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>

namespace sgc_fast {
namespace {

constexpr int kWarp = 32;
constexpr int kVectorBytes = 16;       // one vector load or store per thread
constexpr int kFlatTargetThreads = 256;  // flat kernels: the largest multiple of the period at most this
constexpr int kFlatMaxThreads = 1024;  // a period longer than this takes the strided kernels
constexpr int kUnroll = 4;             // vectors in flight per thread
constexpr int kBlocksPerSM = 4;        // grid target of the (sample, channel chunk) kernels
constexpr int kStridedThreads = 256;   // strided forward kernel
constexpr int kElementwiseThreads = 256;
constexpr int kRowThreads = 256;       // warp-per-row kernels (8 rows per block)
constexpr int kFinishThreads = 256;
constexpr int kDefaultSmemBytes = 48 * 1024;  // dynamic shared memory without an opt-in

template <typename A_t, typename G_t>
using acc_of = std::conditional_t<std::is_same_v<A_t, double> || std::is_same_v<G_t, double>, double, float>;

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// The machine word of a vector: one 16/8/4/2-byte load or store instruction.
template <int kBytes>
struct RawWord;
template <>
struct RawWord<16> {
  using type = uint4;
};
template <>
struct RawWord<8> {
  using type = uint2;
};
template <>
struct RawWord<4> {
  using type = unsigned int;
};
template <>
struct RawWord<2> {
  using type = unsigned short;
};

// Through the machine word and the explicit vector intrinsics: plain struct copies get split into
// scalar stores by the compiler.
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  using W = typename RawWord<sizeof(T) * N>::type;
  const W word = __ldg(reinterpret_cast<const W*>(p));
  Vec<T, N> v;
  memcpy(&v, &word, sizeof(W));
  return v;
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  using W = typename RawWord<sizeof(T) * N>::type;
  W word;
  memcpy(&word, &v, sizeof(W));
  __stwb(reinterpret_cast<W*>(p), word);
}

template <typename T>
__device__ __forceinline__ T relu(T z) {
  return z < T(0) ? T(0) : z;  // NaN stays NaN
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // identical in every lane (each step adds the same two numbers in both lanes)
}

// Channel weights alpha[b,k]: compact grads (any strides), or the alpha workspace ([B,K] contiguous).
template <typename W_t>
struct ChannelWeights {
  const W_t* data;
  int64_t s0, s1;
  __device__ __forceinline__ W_t at(int64_t b, int64_t k) const { return data[b * s0 + k * s1]; }
};

// Where the backward reads dz = (cam > 0) ? grad_cam : 0.
template <typename acc>
struct DzSource {
  const acc* cam;
  const acc* grad_cam;
  int64_t c0, c1, c2, g0, g1, g2;
  __device__ __forceinline__ acc at(int64_t b, int y, int x) const {
    const acc c = cam[b * c0 + y * c1 + x * c2];
    return c > acc(0) ? grad_cam[b * g0 + y * g1 + x * g2] : acc(0);
  }
};

struct Strides4 {
  int64_t s[4];
};

Strides4 strides_of(const at::Tensor& t) {
  Strides4 r{{0, 0, 0, 0}};
  for (int d = 0; d < t.dim(); ++d) r.s[d] = t.stride(d);
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Launch geometry
// ---------------------------------------------------------------------------------------------------

int multiprocessors() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// A tensor [B,K,h,w] whose per-sample block is one contiguous, vector-aligned stream.
bool is_flat(const at::Tensor& t, int vec) {
  const int64_t K = t.size(1), h = t.size(2), w = t.size(3);
  if (t.size(3) != 1 && t.stride(3) != 1) return false;
  if (h != 1 && t.stride(2) != w) return false;
  if (K != 1 && t.stride(1) != h * w) return false;
  if (t.size(0) != 1 && t.stride(0) % vec != 0) return false;
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (static_cast<uintptr_t>(vec) * t.element_size()) == 0;
}

struct FlatGeometry {
  bool ok = false;
  int threads = 0;  // multiple of hw / gcd(hw, vec), so that vec * threads is a multiple of hw
  int rows = 0;     // channels per stride: vec * threads / hw
};

FlatGeometry flat_geometry(int64_t hw, int vec) {
  FlatGeometry g;
  const int64_t period = hw / std::gcd(hw, static_cast<int64_t>(vec));
  if (period > kFlatMaxThreads) return g;
  const int64_t m = std::max<int64_t>(1, kFlatTargetThreads / period);
  g.threads = static_cast<int>(period * m);
  g.rows = static_cast<int>(static_cast<int64_t>(vec) * g.threads / hw);
  g.ok = true;
  return g;
}

struct Split {
  int64_t count;     // channel chunks per sample
  int64_t channels;  // channels per chunk (a multiple of `align`)
};

Split split_channels(int64_t B, int64_t K, int64_t align) {
  const int sms = multiprocessors();
  const int64_t want = std::max<int64_t>(1, (static_cast<int64_t>(kBlocksPerSM) * sms + B - 1) / B);
  const int64_t max_chunks = std::max<int64_t>(1, (K + align - 1) / align);
  const int64_t n = std::min(want, max_chunks);
  int64_t per = (K + n - 1) / n;
  per = (per + align - 1) / align * align;
  return {std::max<int64_t>(1, (K + per - 1) / per), per};
}

template <typename Kernel>
void set_smem(Kernel* kernel, size_t bytes) {
  if (bytes > kDefaultSmemBytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

// Flat forward. Grid (B, splits). kPerPosition: weight of element (k,p) is G[b,k,p] (flat like A);
// otherwise the channel weight alpha[b,k]. Writes relu'd cam (one split) or the split's partial sums.
template <typename A_t, typename W_t, typename acc, int VEC, bool kPerPosition>
__global__ void cam_forward_flat_kernel(const A_t* __restrict__ A, int64_t sa0, const W_t* __restrict__ G,
                                        int64_t sg0, ChannelWeights<W_t> alpha, int64_t K, int hw, int64_t chunk,
                                        int rows, acc* __restrict__ out, bool final) {
  extern __shared__ unsigned char smem_raw[];
  acc* red = reinterpret_cast<acc*>(smem_raw);  // [VEC * T] = [rows][hw]
  const int t = threadIdx.x, T = blockDim.x;
  const int64_t b = blockIdx.x, split = blockIdx.y;
  const int64_t k0 = split * chunk, k1 = k0 + chunk < K ? k0 + chunk : K;
  const int64_t n = k1 > k0 ? (k1 - k0) * hw : 0;  // elements of this chunk
  const A_t* a = A + b * sa0 + k0 * hw;
  const W_t* g = kPerPosition ? G + b * sg0 + k0 * hw : nullptr;
  int coff[VEC];  // channel offset of element j of this thread's vectors within one stride
#pragma unroll
  for (int j = 0; j < VEC; ++j) coff[j] = (VEC * t + j) / hw;
  acc z[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) z[j] = acc(0);

  const int64_t nv = n / VEC;  // full vectors
  int64_t it = 0;              // stride index of the first vector of this round
  for (int64_t v = t; v < nv; v += static_cast<int64_t>(T) * kUnroll, it += kUnroll) {
    Vec<A_t, VEC> va[kUnroll];
    Vec<W_t, VEC> vg[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vv = v + static_cast<int64_t>(u) * T;
      if (vv < nv) {
        va[u] = load_vec<A_t, VEC>(a + vv * VEC);
        if constexpr (kPerPosition) vg[u] = load_vec<W_t, VEC>(g + vv * VEC);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vv = v + static_cast<int64_t>(u) * T;
      if (vv < nv) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          acc wgt;
          if constexpr (kPerPosition) {
            wgt = static_cast<acc>(vg[u].v[j]);
          } else {
            wgt = static_cast<acc>(alpha.at(b, k0 + (it + u) * rows + coff[j]));
          }
          z[j] += wgt * static_cast<acc>(va[u].v[j]);
        }
      }
    }
  }
  // Tail: a partial vector exists only when the chunk length is not a multiple of VEC.
  if (n % VEC != 0 && nv % T == t) {
    const int64_t o = nv * VEC, itt = nv / T;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (o + j < n) {
        const acc wgt = kPerPosition ? static_cast<acc>(g[o + j])
                                     : static_cast<acc>(alpha.at(b, k0 + itt * rows + coff[j]));
        z[j] += wgt * static_cast<acc>(a[o + j]);
      }
    }
  }

#pragma unroll
  for (int j = 0; j < VEC; ++j) red[VEC * t + j] = z[j];
  __syncthreads();
  for (int p = t; p < hw; p += T) {
    acc s = acc(0);
    for (int r = 0; r < rows; ++r) s += red[r * hw + p];
    if (final) {
      out[b * hw + p] = relu(s);
    } else {
      out[(b * gridDim.y + split) * hw + p] = s;
    }
  }
}

// Strided forward (any layout). Grid (B, splits). Thread t handles position pi = t % PT (and pi + PT,
// ...) for channels k0 + ki, k0 + ki + KT, ... (ki = t / PT); the KT partial sums of a position are
// added in ki order.
template <typename A_t, typename W_t, typename acc, bool kPerPosition>
__global__ void cam_forward_strided_kernel(const A_t* __restrict__ A, Strides4 sa, const W_t* __restrict__ G,
                                           Strides4 sg, int64_t K, int h, int w, int64_t chunk,
                                           acc* __restrict__ out, bool final) {
  extern __shared__ unsigned char smem_raw[];
  acc* red = reinterpret_cast<acc*>(smem_raw);  // [T]
  const int t = threadIdx.x, T = blockDim.x;
  const int hw = h * w;
  const int PT = min(hw, T), KT = T / PT;
  const int pi = t % PT, ki = t / PT;
  const int64_t b = blockIdx.x, split = blockIdx.y;
  const int64_t k0 = split * chunk, k1 = k0 + chunk < K ? k0 + chunk : K;
  for (int pb = 0; pb < hw; pb += PT) {
    const int p = pb + pi;
    acc z = acc(0);
    if (ki < KT && p < hw) {
      const int y = p / w, x = p % w;
      const A_t* a = A + b * sa.s[0] + y * sa.s[2] + x * sa.s[3];
      const W_t* g = G + b * sg.s[0] + (kPerPosition ? y * sg.s[2] + x * sg.s[3] : 0);
      for (int64_t k = k0 + ki; k < k1; k += KT) {
        z += static_cast<acc>(g[k * sg.s[1]]) * static_cast<acc>(a[k * sa.s[1]]);
      }
    }
    red[t] = z;
    __syncthreads();
    if (t < PT && p < hw) {
      acc s = acc(0);
      for (int q = 0; q < KT; ++q) s += red[q * PT + t];
      if (final) {
        out[b * hw + p] = relu(s);
      } else {
        out[(b * gridDim.y + split) * hw + p] = s;
      }
    }
    __syncthreads();
  }
}

// cam[b,p] = relu(sum over splits, in split order).
template <typename acc>
__global__ void cam_finish_kernel(const acc* __restrict__ part, int64_t B, int64_t splits, int hw,
                                  acc* __restrict__ cam) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= B * hw) return;
  const int64_t b = e / hw, p = e % hw;
  acc s = acc(0);
  for (int64_t q = 0; q < splits; ++q) s += part[(b * splits + q) * hw + p];
  cam[e] = relu(s);
}

// alpha[b,k] = mean_p grads[b,k,p]: one warp per (b,k) row, any strides.
template <typename G_t, typename acc>
__global__ void cam_alpha_kernel(const G_t* __restrict__ G, Strides4 sg, int64_t B, int64_t K, int h, int w,
                                 acc* __restrict__ alpha) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= B * K) return;  // whole warps leave together
  const int64_t b = row / K, k = row % K;
  const int hw = h * w;
  const G_t* g = G + b * sg.s[0] + k * sg.s[1];
  acc s = acc(0);
  for (int p = lane; p < hw; p += kWarp) s += static_cast<acc>(g[(p / w) * sg.s[2] + (p % w) * sg.s[3]]);
  s = warp_sum(s);
  if (lane == 0) alpha[row] = s / static_cast<acc>(hw);
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

// Flat backward with per-position grads: dA = G dz, dG = A dz. Grid (B, splits).
template <typename A_t, typename G_t, typename acc, int VEC>
__global__ void cam_backward_flat_position_kernel(const A_t* __restrict__ A, int64_t sa0, const G_t* __restrict__ G,
                                                  int64_t sg0, A_t* __restrict__ dA, int64_t sda0,
                                                  G_t* __restrict__ dG, int64_t sdg0, DzSource<acc> dzs, int64_t K,
                                                  int w, int hw, int64_t chunk) {
  const int t = threadIdx.x, T = blockDim.x;
  const int64_t b = blockIdx.x, split = blockIdx.y;
  const int64_t k0 = split * chunk, k1 = k0 + chunk < K ? k0 + chunk : K;
  const int64_t n = k1 > k0 ? (k1 - k0) * hw : 0;
  acc dz[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const int p = (VEC * t + j) % hw;
    dz[j] = dzs.at(b, p / w, p % w);
  }
  const A_t* a = A + b * sa0 + k0 * hw;
  const G_t* g = G + b * sg0 + k0 * hw;
  A_t* da = dA + b * sda0 + k0 * hw;
  G_t* dg = dG + b * sdg0 + k0 * hw;
  const int64_t nv = n / VEC;
  for (int64_t v = t; v < nv; v += static_cast<int64_t>(T) * kUnroll) {
    Vec<A_t, VEC> va[kUnroll];
    Vec<G_t, VEC> vg[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vv = v + static_cast<int64_t>(u) * T;
      if (vv < nv) {
        va[u] = load_vec<A_t, VEC>(a + vv * VEC);
        vg[u] = load_vec<G_t, VEC>(g + vv * VEC);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vv = v + static_cast<int64_t>(u) * T;
      if (vv < nv) {
        Vec<A_t, VEC> oa;
        Vec<G_t, VEC> og;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          oa.v[j] = static_cast<A_t>(static_cast<acc>(vg[u].v[j]) * dz[j]);
          og.v[j] = static_cast<G_t>(static_cast<acc>(va[u].v[j]) * dz[j]);
        }
        store_vec<A_t, VEC>(da + vv * VEC, oa);
        store_vec<G_t, VEC>(dg + vv * VEC, og);
      }
    }
  }
  if (n % VEC != 0 && nv % T == t) {
    const int64_t o = nv * VEC;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (o + j < n) {
        da[o + j] = static_cast<A_t>(static_cast<acc>(g[o + j]) * dz[j]);
        dg[o + j] = static_cast<G_t>(static_cast<acc>(a[o + j]) * dz[j]);
      }
    }
  }
}

// Flat backward with channel weights. Grid (B, splits). Each round takes kUnroll strides (kUnroll *
// rows channels): dA = alpha dz is written at once, A*dz goes to shared memory, one warp per channel
// row sums it (fixed order), then dG is written: compact [B,K] (kFullGrads false) or the full
// [B,K,h,w] constant dalpha / hw (kind "grad" with full grads, flat like A).
template <typename A_t, typename G_t, typename W_t, typename acc, int VEC, bool kFullGrads>
__global__ void cam_backward_flat_channel_kernel(const A_t* __restrict__ A, int64_t sa0, ChannelWeights<W_t> alpha,
                                                 A_t* __restrict__ dA, int64_t sda0, G_t* __restrict__ dG,
                                                 int64_t sdg0, int64_t sdg1, DzSource<acc> dzs, int64_t K, int w,
                                                 int hw, int64_t chunk, int rows) {
  extern __shared__ unsigned char smem_raw[];
  const int t = threadIdx.x, T = blockDim.x;
  acc* prod = reinterpret_cast<acc*>(smem_raw);          // [kUnroll * rows][hw]
  acc* row_val = prod + static_cast<int64_t>(kUnroll) * VEC * T;  // [kUnroll * rows]
  const int64_t b = blockIdx.x, split = blockIdx.y;
  const int64_t k0 = split * chunk, k1 = k0 + chunk < K ? k0 + chunk : K;
  const int64_t n = k1 > k0 ? (k1 - k0) * hw : 0;
  acc dz[VEC];
  int coff[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const int p = (VEC * t + j) % hw;
    dz[j] = dzs.at(b, p / w, p % w);
    coff[j] = (VEC * t + j) / hw;
  }
  const A_t* a = A + b * sa0 + k0 * hw;
  A_t* da = dA + b * sda0 + k0 * hw;
  G_t* dg = kFullGrads ? dG + b * sdg0 + k0 * hw : nullptr;
  const int64_t nvec = (n + VEC - 1) / VEC;  // vectors, the last possibly partial
  const int64_t rounds = (nvec + static_cast<int64_t>(T) * kUnroll - 1) / (static_cast<int64_t>(T) * kUnroll);
  // Rows are reduced by the full warps only (T = 245 for 7x7 leaves a partial last warp).
  const int warp = t / kWarp, lane = t % kWarp, nwarps = T / kWarp;
  const int round_rows = kUnroll * rows;

  for (int64_t r = 0; r < rounds; ++r) {
    Vec<A_t, VEC> va[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t o = (t + (r * kUnroll + u) * T) * static_cast<int64_t>(VEC);
      if (o + VEC <= n) {
        va[u] = load_vec<A_t, VEC>(a + o);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) va[u].v[j] = (o + j < n) ? a[o + j] : A_t(0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t it = r * kUnroll + u;
      const int64_t o = (t + it * T) * static_cast<int64_t>(VEC);
      Vec<A_t, VEC> oa;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const bool valid = o + j < n;
        const acc wgt = valid ? static_cast<acc>(alpha.at(b, k0 + it * rows + coff[j])) : acc(0);
        oa.v[j] = static_cast<A_t>(wgt * dz[j]);
        prod[(u * VEC * T) + VEC * t + j] = static_cast<acc>(va[u].v[j]) * dz[j];
      }
      if (o + VEC <= n) {
        store_vec<A_t, VEC>(da + o, oa);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (o + j < n) da[o + j] = oa.v[j];
      }
    }
    __syncthreads();
    for (int q = warp < nwarps ? warp : round_rows; q < round_rows; q += nwarps) {
      const int64_t k = k0 + r * round_rows + q;
      if (k >= k1) break;  // rows are in channel order: the rest are past the chunk too
      acc s = acc(0);
      for (int p = lane; p < hw; p += kWarp) s += prod[q * hw + p];
      s = warp_sum(s);
      if (lane == 0) {
        if constexpr (kFullGrads) {
          row_val[q] = s / static_cast<acc>(hw);
        } else {
          dG[b * sdg0 + k * sdg1] = static_cast<G_t>(s);
        }
      }
    }
    if constexpr (kFullGrads) {
      __syncthreads();
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t o = (t + (r * kUnroll + u) * T) * static_cast<int64_t>(VEC);
        Vec<G_t, VEC> og;
#pragma unroll
        for (int j = 0; j < VEC; ++j) og.v[j] = static_cast<G_t>(row_val[u * rows + coff[j]]);
        if (o + VEC <= n) {
          store_vec<G_t, VEC>(dg + o, og);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j)
            if (o + j < n) dg[o + j] = og.v[j];
        }
      }
    }
    __syncthreads();
  }
}

// Strided backward with per-position grads: one thread per element.
template <typename A_t, typename G_t, typename acc>
__global__ void cam_backward_strided_position_kernel(const A_t* __restrict__ A, Strides4 sa, const G_t* __restrict__ G,
                                                     Strides4 sg, A_t* __restrict__ dA, Strides4 sda,
                                                     G_t* __restrict__ dG, Strides4 sdg, DzSource<acc> dzs,
                                                     int64_t B, int64_t K, int h, int w) {
  const int64_t total = B * K * h * w;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int x = static_cast<int>(e % w);
    const int y = static_cast<int>((e / w) % h);
    const int64_t k = (e / (static_cast<int64_t>(w) * h)) % K;
    const int64_t b = e / (static_cast<int64_t>(w) * h * K);
    const acc d = dzs.at(b, y, x);
    const acc gv = static_cast<acc>(G[b * sg.s[0] + k * sg.s[1] + y * sg.s[2] + x * sg.s[3]]);
    const acc av = static_cast<acc>(A[b * sa.s[0] + k * sa.s[1] + y * sa.s[2] + x * sa.s[3]]);
    dA[b * sda.s[0] + k * sda.s[1] + y * sda.s[2] + x * sda.s[3]] = static_cast<A_t>(gv * d);
    dG[b * sdg.s[0] + k * sdg.s[1] + y * sdg.s[2] + x * sdg.s[3]] = static_cast<G_t>(av * d);
  }
}

// Strided backward with channel weights: one warp per (b,k) row.
template <typename A_t, typename G_t, typename W_t, typename acc, bool kFullGrads>
__global__ void cam_backward_strided_channel_kernel(const A_t* __restrict__ A, Strides4 sa, ChannelWeights<W_t> alpha,
                                                    A_t* __restrict__ dA, Strides4 sda, G_t* __restrict__ dG,
                                                    Strides4 sdg, DzSource<acc> dzs, int64_t B, int64_t K, int h,
                                                    int w) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (row >= B * K) return;
  const int64_t b = row / K, k = row % K;
  const int hw = h * w;
  const acc wgt = static_cast<acc>(alpha.at(b, k));
  const A_t* a = A + b * sa.s[0] + k * sa.s[1];
  A_t* da = dA + b * sda.s[0] + k * sda.s[1];
  acc s = acc(0);
  for (int p = lane; p < hw; p += kWarp) {
    const int y = p / w, x = p % w;
    const acc d = dzs.at(b, y, x);
    da[y * sda.s[2] + x * sda.s[3]] = static_cast<A_t>(wgt * d);
    s += static_cast<acc>(a[y * sa.s[2] + x * sa.s[3]]) * d;
  }
  s = __shfl_sync(0xffffffffu, warp_sum(s), 0);
  if constexpr (kFullGrads) {
    const G_t v = static_cast<G_t>(s / static_cast<acc>(hw));
    G_t* dg = dG + b * sdg.s[0] + k * sdg.s[1];
    for (int p = lane; p < hw; p += kWarp) dg[(p / w) * sdg.s[2] + (p % w) * sdg.s[3]] = v;
  } else if (lane == 0) {
    dG[b * sdg.s[0] + k * sdg.s[1]] = static_cast<G_t>(s);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------

// The shared checks of op_checks.h, plus what the CUDA kernels need.
void check_inputs(const at::Tensor& feats, const at::Tensor& grads) {
  check_cam_inputs(feats, grads);
  TORCH_CHECK(feats.is_cuda(), "feats: expected a CUDA tensor, got one on ", feats.device());
  TORCH_CHECK(feats.size(2) * feats.size(3) <= std::numeric_limits<int>::max(), "feats: h*w too large, got ",
              feats.sizes());
}

template <typename T1, typename T2 = T1>
constexpr int vec_of() {
  return kVectorBytes / static_cast<int>(sizeof(T1) > sizeof(T2) ? sizeof(T1) : sizeof(T2));
}

// alpha [B,K] in acc precision: mean of full grads over positions (kind "grad").
template <typename G_t, typename acc>
at::Tensor channel_means(const at::Tensor& grads) {
  const int64_t B = grads.size(0), K = grads.size(1);
  at::Tensor alpha = at::empty({B, K}, grads.options().dtype(c10::CppTypeToScalarType<acc>::value));
  const int64_t rows_per_block = kRowThreads / kWarp;
  const int64_t blocks = (B * K + rows_per_block - 1) / rows_per_block;
  cam_alpha_kernel<G_t, acc><<<blocks, kRowThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      grads.const_data_ptr<G_t>(), strides_of(grads), B, K, static_cast<int>(grads.size(2)),
      static_cast<int>(grads.size(3)), alpha.mutable_data_ptr<acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return alpha;
}

// Forward with weights W_t (per position: full grads; else channel weights `alpha`).
template <typename A_t, typename W_t, typename acc, bool kPerPosition>
void launch_forward(const at::Tensor& feats, const at::Tensor& weights, at::Tensor& cam) {
  const int64_t B = feats.size(0), K = feats.size(1);
  const int h = static_cast<int>(feats.size(2)), w = static_cast<int>(feats.size(3)), hw = h * w;
  auto stream = at::cuda::getCurrentCUDAStream();
  constexpr int VEC = kPerPosition ? vec_of<A_t, W_t>() : vec_of<A_t>();
  const FlatGeometry geo = flat_geometry(hw, VEC);
  const bool flat = geo.ok && is_flat(feats, VEC) && (!kPerPosition || is_flat(weights, VEC));
  const Split split = split_channels(B, K, flat ? VEC : 1);
  at::Tensor part;
  acc* out = cam.mutable_data_ptr<acc>();
  if (split.count > 1) {
    part = at::empty({B, split.count, hw}, cam.options());
    out = part.mutable_data_ptr<acc>();
  }
  const bool final = split.count == 1;
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(split.count));
  ChannelWeights<W_t> alpha{weights.const_data_ptr<W_t>(), weights.stride(0), weights.dim() > 1 ? weights.stride(1) : 0};
  if (flat) {
    const size_t smem = static_cast<size_t>(VEC) * geo.threads * sizeof(acc);
    auto kernel = cam_forward_flat_kernel<A_t, W_t, acc, VEC, kPerPosition>;
    set_smem(kernel, smem);
    kernel<<<grid, geo.threads, smem, stream>>>(feats.const_data_ptr<A_t>(), feats.stride(0),
                                               weights.const_data_ptr<W_t>(), weights.stride(0), alpha, K, hw,
                                               split.channels, geo.rows, out, final);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    Strides4 sw = strides_of(weights);
    const size_t smem = kStridedThreads * sizeof(acc);
    cam_forward_strided_kernel<A_t, W_t, acc, kPerPosition><<<grid, kStridedThreads, smem, stream>>>(
        feats.const_data_ptr<A_t>(), strides_of(feats), weights.const_data_ptr<W_t>(), sw, K, h, w, split.channels,
        out, final);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!final) {
    const int64_t blocks = (B * hw + kFinishThreads - 1) / kFinishThreads;
    cam_finish_kernel<acc><<<blocks, kFinishThreads, 0, stream>>>(part.const_data_ptr<acc>(), B, split.count, hw,
                                                                   cam.mutable_data_ptr<acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename A_t, typename G_t>
void cam_forward(const at::Tensor& feats, const at::Tensor& grads, at::Tensor& cam, CamKind kind) {
  using acc = acc_of<A_t, G_t>;
  const bool compact = grads.dim() == 2;
  if (compact) {
    launch_forward<A_t, G_t, acc, false>(feats, grads, cam);
  } else if (kind == CamKind::kHiRes) {
    launch_forward<A_t, G_t, acc, true>(feats, grads, cam);
  } else {
    const at::Tensor alpha = channel_means<G_t, acc>(grads);
    launch_forward<A_t, acc, acc, false>(feats, alpha, cam);
  }
}

template <typename acc>
DzSource<acc> dz_source(const at::Tensor& cam, const at::Tensor& grad_cam) {
  return {cam.const_data_ptr<acc>(), grad_cam.const_data_ptr<acc>(), cam.stride(0), cam.stride(1), cam.stride(2),
          grad_cam.stride(0), grad_cam.stride(1), grad_cam.stride(2)};
}

template <typename A_t, typename G_t, typename acc>
void launch_backward_position(const at::Tensor& cam, const at::Tensor& grad_cam, const at::Tensor& feats,
                              const at::Tensor& grads, at::Tensor& d_feats, at::Tensor& d_grads) {
  const int64_t B = feats.size(0), K = feats.size(1);
  const int h = static_cast<int>(feats.size(2)), w = static_cast<int>(feats.size(3)), hw = h * w;
  auto stream = at::cuda::getCurrentCUDAStream();
  const DzSource<acc> dzs = dz_source<acc>(cam, grad_cam);
  constexpr int VEC = vec_of<A_t, G_t>();
  const FlatGeometry geo = flat_geometry(hw, VEC);
  const bool flat = geo.ok && is_flat(feats, VEC) && is_flat(grads, VEC) && is_flat(d_feats, VEC) &&
                    is_flat(d_grads, VEC);
  if (flat) {
    const Split split = split_channels(B, K, VEC);
    const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(split.count));
    cam_backward_flat_position_kernel<A_t, G_t, acc, VEC><<<grid, geo.threads, 0, stream>>>(
        feats.const_data_ptr<A_t>(), feats.stride(0), grads.const_data_ptr<G_t>(), grads.stride(0),
        d_feats.mutable_data_ptr<A_t>(), d_feats.stride(0), d_grads.mutable_data_ptr<G_t>(), d_grads.stride(0), dzs,
        K, w, hw, split.channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t total = B * K * hw;
    const int sms = multiprocessors();
    const int64_t blocks = std::min<int64_t>((total + kElementwiseThreads - 1) / kElementwiseThreads,
                                             static_cast<int64_t>(sms) * 32);
    cam_backward_strided_position_kernel<A_t, G_t, acc><<<blocks, kElementwiseThreads, 0, stream>>>(
        feats.const_data_ptr<A_t>(), strides_of(feats), grads.const_data_ptr<G_t>(), strides_of(grads),
        d_feats.mutable_data_ptr<A_t>(), strides_of(d_feats), d_grads.mutable_data_ptr<G_t>(), strides_of(d_grads),
        dzs, B, K, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename A_t, typename G_t, typename W_t, typename acc, bool kFullGrads>
void launch_backward_channel(const at::Tensor& cam, const at::Tensor& grad_cam, const at::Tensor& feats,
                             const at::Tensor& weights, at::Tensor& d_feats, at::Tensor& d_grads) {
  const int64_t B = feats.size(0), K = feats.size(1);
  const int h = static_cast<int>(feats.size(2)), w = static_cast<int>(feats.size(3)), hw = h * w;
  auto stream = at::cuda::getCurrentCUDAStream();
  const DzSource<acc> dzs = dz_source<acc>(cam, grad_cam);
  const ChannelWeights<W_t> alpha{weights.const_data_ptr<W_t>(), weights.stride(0), weights.stride(1)};
  constexpr int VEC = kFullGrads ? vec_of<A_t, G_t>() : vec_of<A_t>();
  const FlatGeometry geo = flat_geometry(hw, VEC);
  const bool flat = geo.ok && is_flat(feats, VEC) && is_flat(d_feats, VEC) && (!kFullGrads || is_flat(d_grads, VEC));
  if (flat) {
    const Split split = split_channels(B, K, VEC);
    const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(split.count));
    const size_t smem = (static_cast<size_t>(kUnroll) * VEC * geo.threads + static_cast<size_t>(kUnroll) * geo.rows) *
                        sizeof(acc);
    auto kernel = cam_backward_flat_channel_kernel<A_t, G_t, W_t, acc, VEC, kFullGrads>;
    set_smem(kernel, smem);
    kernel<<<grid, geo.threads, smem, stream>>>(feats.const_data_ptr<A_t>(), feats.stride(0), alpha,
                                               d_feats.mutable_data_ptr<A_t>(), d_feats.stride(0),
                                               d_grads.mutable_data_ptr<G_t>(), d_grads.stride(0), d_grads.stride(1),
                                               dzs, K, w, hw, split.channels, geo.rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t rows_per_block = kRowThreads / kWarp;
    const int64_t blocks = (B * K + rows_per_block - 1) / rows_per_block;
    cam_backward_strided_channel_kernel<A_t, G_t, W_t, acc, kFullGrads><<<blocks, kRowThreads, 0, stream>>>(
        feats.const_data_ptr<A_t>(), strides_of(feats), alpha, d_feats.mutable_data_ptr<A_t>(), strides_of(d_feats),
        d_grads.mutable_data_ptr<G_t>(), strides_of(d_grads), dzs, B, K, h, w);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename A_t, typename G_t>
void cam_backward(const at::Tensor& grad_cam, const at::Tensor& cam, const at::Tensor& feats, const at::Tensor& grads,
                  at::Tensor& d_feats, at::Tensor& d_grads, CamKind kind) {
  using acc = acc_of<A_t, G_t>;
  constexpr auto acc_type = c10::CppTypeToScalarType<acc>::value;
  // cam/grad_cam are [B,h,w] in acc precision (the forward's output and its gradient); convert otherwise.
  const at::Tensor cam_acc = cam.scalar_type() == acc_type ? cam : cam.to(acc_type);
  const at::Tensor grad_acc = grad_cam.scalar_type() == acc_type ? grad_cam : grad_cam.to(acc_type);
  if (grads.dim() == 2) {
    launch_backward_channel<A_t, G_t, G_t, acc, false>(cam_acc, grad_acc, feats, grads, d_feats, d_grads);
  } else if (kind == CamKind::kHiRes) {
    launch_backward_position<A_t, G_t, acc>(cam_acc, grad_acc, feats, grads, d_feats, d_grads);
  } else {
    const at::Tensor alpha = channel_means<G_t, acc>(grads);
    launch_backward_channel<A_t, G_t, acc, acc, true>(cam_acc, grad_acc, feats, alpha, d_feats, d_grads);
  }
}

at::Tensor batched_cam_cuda(const at::Tensor& feats, const at::Tensor& grads, c10::string_view kind_name) {
  check_inputs(feats, grads);
  const CamKind kind = parse_kind(kind_name);
  const c10::cuda::OptionalCUDAGuard guard(feats.device());
  at::Tensor cam = at::empty({feats.size(0), feats.size(2), feats.size(3)},
                             feats.options().dtype(cam_dtype(feats, grads)));
  if (cam.numel() == 0) return cam;
  if (feats.size(1) == 0) return cam.zero_();
  SGC_DISPATCH_PAIR(feats.scalar_type(), grads.scalar_type(), "batched_cam_cuda",
                    [&] { cam_forward<feats_t, grads_t>(feats, grads, cam, kind); });
  return cam;
}

std::tuple<at::Tensor, at::Tensor> batched_cam_backward_cuda(const at::Tensor& grad_cam, const at::Tensor& cam,
                                                             const at::Tensor& feats, const at::Tensor& grads,
                                                             c10::string_view kind_name) {
  check_inputs(feats, grads);
  const CamKind kind = parse_kind(kind_name);
  TORCH_CHECK(grad_cam.sizes() == cam.sizes(), "grad_cam: shape ", grad_cam.sizes(), " does not match cam ",
              cam.sizes());
  TORCH_CHECK(cam.dim() == 3 && cam.size(0) == feats.size(0) && cam.size(1) == feats.size(2) &&
                  cam.size(2) == feats.size(3),
              "cam: expected [", feats.size(0), ", ", feats.size(2), ", ", feats.size(3), "], got ", cam.sizes());
  TORCH_CHECK(cam.device() == feats.device() && grad_cam.device() == feats.device(),
              "cam, grad_cam: expected them on ", feats.device());
  const c10::cuda::OptionalCUDAGuard guard(feats.device());
  at::Tensor d_feats = at::empty_like(feats);
  at::Tensor d_grads = at::empty_like(grads);
  if (d_feats.numel() == 0) return {d_feats, d_grads};
  SGC_DISPATCH_PAIR(feats.scalar_type(), grads.scalar_type(), "batched_cam_backward_cuda", [&] {
    cam_backward<feats_t, grads_t>(grad_cam, cam, feats, grads, d_feats, d_grads, kind);
  });
  return {d_feats, d_grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CUDA, m) {
  m.impl("batched_cam", &batched_cam_cuda);
  m.impl("batched_cam_backward", &batched_cam_backward_cuda);
}

}  // namespace sgc_fast
