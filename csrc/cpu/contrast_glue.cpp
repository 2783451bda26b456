// The float64 glue of contrast_logits on the CPU (formulas in contrast_glue.h, semantics in
// sgc_fast/contrast.py):
//   contrast_normalise     ct = cam / total, total = w.cam + eps (per sample), ct written in float32 or float64
//   contrast_epilogue      logits from the stats, and the stats packed into one float64 buffer for the backward
//   contrast_coefficients  the coefficient matrices of the backward's gradient fields, from the packed stats and
//                          the logits' gradient
//   contrast_unnormalise   chain d/d(ct) to d/d(cam)
//   warp_matrices          the per-sample CGC warp matrices, entry by entry (no index gathers)
// Each is one pass over tiny tensors; together they replace ~60 small ATen ops per forward + backward.
// Reductions are sequential per sample/row: results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "contrast_glue.h"
#include "glue_checks.h"

#include <tuple>

namespace sgc_fast {
namespace {

template <typename Out, typename In>
void normalise_rows(const In* cam, const double* w, double eps, int64_t B, int64_t n, Out* ct, double* total) {
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const In* c = cam + b * n;
      double s = 0;
      for (int64_t p = 0; p < n; ++p) s += static_cast<double>(c[p]) * w[p];
      s += eps;
      total[b] = s;
      for (int64_t p = 0; p < n; ++p) ct[b * n + p] = static_cast<Out>(static_cast<double>(c[p]) / s);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> contrast_normalise_cpu(const at::Tensor& cam_in, const at::Tensor& weight_in,
                                                          double eps, at::ScalarType dtype) {
  check_normalise(cam_in, weight_in, dtype);
  const at::Tensor cam = cam_in.contiguous(), weight = weight_in.contiguous();
  const int64_t B = cam.size(0), n = cam.size(1) * cam.size(2);
  at::Tensor ct = at::empty(cam.sizes(), cam.options().dtype(dtype));
  at::Tensor total = at::empty({B}, cam.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "contrast_normalise_cpu", [&] {
    const scalar_t* c = cam.const_data_ptr<scalar_t>();
    if (dtype == at::kDouble)
      normalise_rows(c, weight.const_data_ptr<double>(), eps, B, n, ct.mutable_data_ptr<double>(),
                     total.mutable_data_ptr<double>());
    else
      normalise_rows(c, weight.const_data_ptr<double>(), eps, B, n, ct.mutable_data_ptr<float>(),
                     total.mutable_data_ptr<double>());
  });
  return {ct, total};
}

at::Tensor self_index_long(const c10::optional<at::Tensor>& self_index) {
  return self_index.has_value() ? self_index->to(at::kLong).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> contrast_epilogue_cpu(const at::Tensor& gram, const at::Tensor& pos,
                                                         const at::Tensor& na, const at::Tensor& np,
                                                         const at::Tensor& nq,
                                                         const c10::optional<at::Tensor>& self_index, bool separate,
                                                         double temperature, at::ScalarType dtype) {
  const int64_t NQ = check_epilogue(gram, pos, na, np, nq, self_index, separate, temperature, dtype);
  const int64_t B = gram.size(0), ncols = separate ? 1 + NQ : B;
  const auto opts = gram.options();
  at::Tensor packed = at::empty({glue::packed_numel(B, NQ)}, opts);
  // Pack first (contiguous copies into the slots), then read the logits from the packed buffer.
  int64_t off = 0;
  for (const at::Tensor* t : {&gram, &pos, &na, &np, &nq}) {
    packed.narrow(0, off, t->numel()).view(t->sizes()).copy_(*t);
    off += t->numel();
  }
  const glue::Stats s = glue::unpack(packed.const_data_ptr<double>(), B, NQ);
  const at::Tensor self = self_index_long(self_index);
  const int64_t* self_p = self.defined() ? self.const_data_ptr<int64_t>() : nullptr;
  at::Tensor logits = at::empty({B, ncols}, opts.dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES(dtype, "contrast_epilogue_cpu", [&] {
    scalar_t* out = logits.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t self_i = self_p ? self_p[i] : -1;
        for (int64_t c = 0; c < ncols; ++c)
          out[i * ncols + c] = static_cast<scalar_t>(glue::logit(s, i, c, separate, self_i, temperature));
      }
    });
  });
  return {logits, packed};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrast_coefficients_cpu(
    const at::Tensor& packed_in, const at::Tensor& grad_in, const c10::optional<at::Tensor>& self_index, bool separate,
    double temperature) {
  const int64_t NQ = check_coefficients(packed_in, grad_in, self_index, separate, temperature);
  const at::Tensor packed = packed_in.contiguous(), grad = grad_in.contiguous();
  const int64_t B = grad.size(0), ncols = grad.size(1), N = separate ? NQ : 0;
  const auto opts = packed.options();
  at::Tensor caa = at::zeros({B, B}, opts), caq = at::empty({B, N}, opts), cqa = at::empty({N, B}, opts),
             cqq = at::empty({N}, opts), cap = at::empty({B}, opts), cpp = at::empty({B}, opts);
  const glue::Stats s = glue::unpack(packed.const_data_ptr<double>(), B, NQ);
  const at::Tensor self = self_index_long(self_index);
  const int64_t* self_p = self.defined() ? self.const_data_ptr<int64_t>() : nullptr;
  const double t = temperature;
  double* caa_p = caa.mutable_data_ptr<double>();
  double* caq_p = caq.mutable_data_ptr<double>();
  double* cqa_p = cqa.mutable_data_ptr<double>();
  double* cqq_p = cqq.mutable_data_ptr<double>();
  double* cap_p = cap.mutable_data_ptr<double>();
  double* cpp_p = cpp.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "contrast_coefficients_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    at::parallel_for(0, B, 8, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t self_i = self_p ? self_p[i] : -1;
        double kappa = 0;
        for (int64_t j = 0; j < NQ; ++j) kappa += glue::kappa_a_term(s, g, ncols, i, j, separate, self_i, t);
        glue::row_coefs(s, g, ncols, i, kappa, t, separate, &caa_p[i * B + i], &cap_p[i], &cpp_p[i]);
        if (separate) {
          for (int64_t k = 0; k < N; ++k) caq_p[i * N + k] = glue::coef_aq(s, g, ncols, i, k, self_i, t);
        } else {
          for (int64_t j = 0; j < B; ++j)
            if (j != i) caa_p[i * B + j] = glue::coef_aa_offdiag(s, g, ncols, i, j, t);
        }
      }
    });
    if (separate) {
      at::parallel_for(0, N, 8, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          double kappa = 0;
          for (int64_t i = 0; i < B; ++i) {
            kappa += glue::kappa_q_term(s, g, ncols, i, k, self_p ? self_p[i] : -1, t);
            cqa_p[k * B + i] = caq_p[i * N + k];
          }
          cqq_p[k] = glue::coef_qq(s, k, kappa);
        }
      });
    }
  });
  return {caa, caq, cqa, cqq, cap, cpp};
}

at::Tensor contrast_unnormalise_cpu(const at::Tensor& grad_in, const at::Tensor& cam_in, const at::Tensor& total_in,
                                    const at::Tensor& weight_in) {
  check_unnormalise(grad_in, cam_in, total_in, weight_in);
  const at::Tensor grad = grad_in.contiguous(), cam = cam_in.contiguous(), total = total_in.contiguous(),
                   weight = weight_in.contiguous();
  const int64_t B = cam.size(0), n = cam.size(1) * cam.size(2);
  at::Tensor out = at::empty(cam.sizes(), cam.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cam.scalar_type(), "contrast_unnormalise_cpu", [&] {
    const scalar_t* c = cam.const_data_ptr<scalar_t>();
    const double* g = grad.const_data_ptr<double>();
    const double* tot = total.const_data_ptr<double>();
    const double* w = weight.const_data_ptr<double>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double inner = 0;
        for (int64_t p = 0; p < n; ++p) inner += g[b * n + p] * static_cast<double>(c[b * n + p]);
        const double tb = tot[b];
        inner /= tb * tb;
        for (int64_t p = 0; p < n; ++p) o[b * n + p] = static_cast<scalar_t>(g[b * n + p] / tb - inner * w[p]);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> warp_matrices_cpu(const at::Tensor& crop_in, const at::Tensor& flip_in, int64_t H,
                                                     int64_t W, int64_t h, int64_t w) {
  check_warp(crop_in, flip_in, H, W, h, w);
  const at::Tensor crop = crop_in.to(at::kLong).contiguous(), flip = flip_in.contiguous();
  const int64_t B = crop.size(0);
  const auto opts = crop.options().dtype(at::kDouble);
  at::Tensor vy = at::empty({B, H, h}, opts), vx = at::empty({B, W, w}, opts);
  const int64_t* c = crop.const_data_ptr<int64_t>();
  const bool* f = flip.const_data_ptr<bool>();
  double* py = vy.mutable_data_ptr<double>();
  double* px = vx.mutable_data_ptr<double>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t* box = c + 4 * b;  // top, left, height, width
      for (int64_t r = 0; r < H; ++r)
        for (int64_t y = 0; y < h; ++y) py[(b * H + r) * h + y] = glue::warp_entry(r, y, H, h, box[0], box[2]);
      for (int64_t r = 0; r < W; ++r) {
        const int64_t src = f[b] ? W - 1 - r : r;  // a mirrored crop reads its rows backwards
        for (int64_t x = 0; x < w; ++x) px[(b * W + r) * w + x] = glue::warp_entry(src, x, W, w, box[1], box[3]);
      }
    }
  });
  return {vy, vx};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CPU, m) {
  m.impl("contrast_normalise", &contrast_normalise_cpu);
  m.impl("contrast_epilogue", &contrast_epilogue_cpu);
  m.impl("contrast_coefficients", &contrast_coefficients_cpu);
  m.impl("contrast_unnormalise", &contrast_unnormalise_cpu);
  m.impl("warp_matrices", &warp_matrices_cpu);
}

}  // namespace sgc_fast
