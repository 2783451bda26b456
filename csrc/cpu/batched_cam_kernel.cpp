// batched_cam on the CPU: forward and backward.
//
// Computes, for every sample b and position p of the h x w grid,
//   kind "hires": cam[b,p] = relu( sum_k grads[b,k,p] * feats[b,k,p] )
//   kind "grad" : cam[b,p] = relu( sum_k alpha[b,k] * feats[b,k,p] ),  alpha = mean_p grads[b,k,p]
// `grads` is either [B,K,h,w] (any strides) or the compact [B,K] form of a spatially constant gradient
// (what head_grads produces for a GAP + Linear head); then both kinds coincide and the backward returns
// the [B,K] gradient directly, so no full-size dG is ever written.
//
// Work split: the forward gives each thread whole samples (the K-sum of a sample runs in one fixed
// order, so results do not depend on the thread count); the backward gives each thread (b, k) rows.
// Arithmetic in float for fp16/bf16/fp32, double if either input is double.
// Bytes: forward reads feats and grads once (2*B*K*h*w elements) and writes B*h*w; backward reads them
// once more and writes dA and dG once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "op_checks.h"

#include <type_traits>
#include <vector>

namespace sgc_fast {
namespace {

// Minimum (b, k) rows per task of the backward's parallel loop.
constexpr int64_t kBackwardGrain = 16;
// Independent accumulators of the backward's spatial reduction.
constexpr int kLanes = 8;

struct Layout {
  int64_t B, K, h, w;
  int64_t sa[4];  // feats strides
  int64_t sg[4];  // grads strides (spatial strides 0 for the compact form)
  bool compact;
};

Layout make_layout(const at::Tensor& feats, const at::Tensor& grads) {
  Layout L;
  L.B = feats.size(0);
  L.K = feats.size(1);
  L.h = feats.size(2);
  L.w = feats.size(3);
  for (int d = 0; d < 4; ++d) L.sa[d] = feats.stride(d);
  L.compact = grads.dim() == 2;
  if (L.compact) {
    L.sg[0] = grads.stride(0);
    L.sg[1] = grads.stride(1);
    L.sg[2] = 0;
    L.sg[3] = 0;
  } else {
    for (int d = 0; d < 4; ++d) L.sg[d] = grads.stride(d);
  }
  return L;
}

template <typename A_t, typename G_t>
using acc_of = std::conditional_t<std::is_same_v<A_t, double> || std::is_same_v<G_t, double>, double, float>;

// alpha[b,k]: the channel weight (grads itself for the compact form, its spatial mean otherwise).
template <typename acc, typename G_t>
inline acc channel_weight(const G_t* g, const Layout& L, CamKind kind) {
  if (L.compact || kind == CamKind::kHiRes) return static_cast<acc>(g[0]);
  acc s = 0;
  for (int64_t y = 0; y < L.h; ++y)
    for (int64_t x = 0; x < L.w; ++x) s += static_cast<acc>(g[y * L.sg[2] + x * L.sg[3]]);
  return s / static_cast<acc>(L.h * L.w);
}

template <typename A_t, typename G_t>
void cam_forward(const at::Tensor& feats, const at::Tensor& grads, at::Tensor& cam, CamKind kind) {
  using acc = acc_of<A_t, G_t>;
  const Layout L = make_layout(feats, grads);
  const A_t* A = feats.const_data_ptr<A_t>();
  const G_t* G = grads.const_data_ptr<G_t>();
  acc* out = cam.mutable_data_ptr<acc>();
  const int64_t hw = L.h * L.w;
  // Per-position gradients are read only by "hires" with a full-size G.
  const bool per_position = !L.compact && kind == CamKind::kHiRes;
  const bool a_flat = L.sa[3] == 1 && L.sa[2] == L.w;
  const bool g_flat = L.sg[3] == 1 && L.sg[2] == L.w;
  at::parallel_for(0, L.B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc> z(hw);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(z.begin(), z.end(), acc(0));
      for (int64_t k = 0; k < L.K; ++k) {
        const A_t* a = A + b * L.sa[0] + k * L.sa[1];
        const G_t* g = G + b * L.sg[0] + k * L.sg[1];
        if (per_position) {
          if (a_flat && g_flat) {
            for (int64_t p = 0; p < hw; ++p) z[p] += static_cast<acc>(g[p]) * static_cast<acc>(a[p]);
          } else {
            for (int64_t y = 0; y < L.h; ++y)
              for (int64_t x = 0; x < L.w; ++x)
                z[y * L.w + x] += static_cast<acc>(g[y * L.sg[2] + x * L.sg[3]]) *
                                  static_cast<acc>(a[y * L.sa[2] + x * L.sa[3]]);
          }
        } else {
          const acc alpha = channel_weight<acc>(g, L, kind);
          if (a_flat) {
            for (int64_t p = 0; p < hw; ++p) z[p] += alpha * static_cast<acc>(a[p]);
          } else {
            for (int64_t y = 0; y < L.h; ++y)
              for (int64_t x = 0; x < L.w; ++x) z[y * L.w + x] += alpha * static_cast<acc>(a[y * L.sa[2] + x * L.sa[3]]);
          }
        }
      }
      acc* o = out + b * hw;
      for (int64_t p = 0; p < hw; ++p) o[p] = z[p] < acc(0) ? acc(0) : z[p];  // relu, NaN stays NaN
    }
  });
}

template <typename A_t, typename G_t>
void cam_backward(const at::Tensor& grad_cam, const at::Tensor& cam, const at::Tensor& feats,
                  const at::Tensor& grads, at::Tensor& d_feats, at::Tensor& d_grads, CamKind kind) {
  using acc = acc_of<A_t, G_t>;
  const Layout L = make_layout(feats, grads);
  const int64_t hw = L.h * L.w;
  // dz = grad_cam where the relu was active (cam > 0), else 0; [B, h*w] in acc precision.
  at::Tensor dz_t = at::where(cam > 0, grad_cam, at::zeros({}, grad_cam.options()))
                        .to(c10::CppTypeToScalarType<acc>::value)
                        .contiguous();
  const acc* dz = dz_t.const_data_ptr<acc>();
  const A_t* A = feats.const_data_ptr<A_t>();
  const G_t* G = grads.const_data_ptr<G_t>();
  A_t* dA = d_feats.mutable_data_ptr<A_t>();
  G_t* dG = d_grads.mutable_data_ptr<G_t>();
  int64_t sda[4], sdg[4];
  for (int d = 0; d < 4; ++d) sda[d] = d_feats.stride(d);
  for (int d = 0; d < d_grads.dim(); ++d) sdg[d] = d_grads.stride(d);
  const bool per_position = !L.compact && kind == CamKind::kHiRes;
  at::parallel_for(0, L.B * L.K, kBackwardGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L.K, k = r % L.K;
      const A_t* a = A + b * L.sa[0] + k * L.sa[1];
      const G_t* g = G + b * L.sg[0] + k * L.sg[1];
      A_t* da = dA + b * sda[0] + k * sda[1];
      const acc* dzb = dz + b * hw;
      const bool flat = L.sa[3] == 1 && L.sa[2] == L.w && sda[3] == 1 && sda[2] == L.w;
      if (per_position) {
        G_t* dg = dG + b * sdg[0] + k * sdg[1];
        if (flat && L.sg[3] == 1 && L.sg[2] == L.w && sdg[3] == 1 && sdg[2] == L.w) {
          for (int64_t p = 0; p < hw; ++p) {
            da[p] = static_cast<A_t>(static_cast<acc>(g[p]) * dzb[p]);
            dg[p] = static_cast<G_t>(static_cast<acc>(a[p]) * dzb[p]);
          }
          continue;
        }
        for (int64_t y = 0; y < L.h; ++y)
          for (int64_t x = 0; x < L.w; ++x) {
            const acc d = dzb[y * L.w + x];
            da[y * sda[2] + x * sda[3]] = static_cast<A_t>(static_cast<acc>(g[y * L.sg[2] + x * L.sg[3]]) * d);
            dg[y * sdg[2] + x * sdg[3]] = static_cast<G_t>(static_cast<acc>(a[y * L.sa[2] + x * L.sa[3]]) * d);
          }
        continue;
      }
      const acc alpha = channel_weight<acc>(g, L, kind);
      acc d_alpha = 0;
      if (flat) {
        // Fixed lanes keep the reduction vectorisable and its order independent of anything but hw.
        acc lane[kLanes] = {};
        int64_t p = 0;
        for (; p + kLanes <= hw; p += kLanes)
          for (int l = 0; l < kLanes; ++l) {
            da[p + l] = static_cast<A_t>(alpha * dzb[p + l]);
            lane[l] += static_cast<acc>(a[p + l]) * dzb[p + l];
          }
        for (; p < hw; ++p) {
          da[p] = static_cast<A_t>(alpha * dzb[p]);
          d_alpha += static_cast<acc>(a[p]) * dzb[p];
        }
        for (int l = 0; l < kLanes; ++l) d_alpha += lane[l];
      } else {
        for (int64_t y = 0; y < L.h; ++y)
          for (int64_t x = 0; x < L.w; ++x) {
            const acc d = dzb[y * L.w + x];
            da[y * sda[2] + x * sda[3]] = static_cast<A_t>(alpha * d);
            d_alpha += static_cast<acc>(a[y * L.sa[2] + x * L.sa[3]]) * d;
          }
      }
      if (L.compact) {
        dG[b * sdg[0] + k * sdg[1]] = static_cast<G_t>(d_alpha);
      } else {  // kind "grad": alpha is the mean of grads, so every position gets d_alpha / (h*w)
        G_t* dg = dG + b * sdg[0] + k * sdg[1];
        const G_t v = static_cast<G_t>(d_alpha / static_cast<acc>(hw));
        for (int64_t y = 0; y < L.h; ++y)
          for (int64_t x = 0; x < L.w; ++x) dg[y * sdg[2] + x * sdg[3]] = v;
      }
    }
  });
}

at::Tensor batched_cam_cpu(const at::Tensor& feats, const at::Tensor& grads, c10::string_view kind_name) {
  check_cam_inputs(feats, grads);
  const CamKind kind = parse_kind(kind_name);
  at::Tensor cam = at::empty({feats.size(0), feats.size(2), feats.size(3)},
                             feats.options().dtype(cam_dtype(feats, grads)));
  SGC_DISPATCH_PAIR(feats.scalar_type(), grads.scalar_type(), "batched_cam_cpu",
                    [&] { cam_forward<feats_t, grads_t>(feats, grads, cam, kind); });
  return cam;
}

std::tuple<at::Tensor, at::Tensor> batched_cam_backward_cpu(const at::Tensor& grad_cam, const at::Tensor& cam,
                                                            const at::Tensor& feats, const at::Tensor& grads,
                                                            c10::string_view kind_name) {
  check_cam_inputs(feats, grads);
  const CamKind kind = parse_kind(kind_name);
  TORCH_CHECK(grad_cam.sizes() == cam.sizes(), "grad_cam: shape ", grad_cam.sizes(), " does not match cam ",
              cam.sizes());
  at::Tensor d_feats = at::empty_like(feats);
  at::Tensor d_grads = at::empty_like(grads);
  SGC_DISPATCH_PAIR(feats.scalar_type(), grads.scalar_type(), "batched_cam_backward_cpu", [&] {
    cam_backward<feats_t, grads_t>(grad_cam, cam, feats, grads, d_feats, d_grads, kind);
  });
  return {d_feats, d_grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CPU, m) {
  m.impl("batched_cam", &batched_cam_cpu);
  m.impl("batched_cam_backward", &batched_cam_backward_cpu);
}

}  // namespace sgc_fast
