// The float64 glue of contrast_logits on the CPU (formulas in contrast_glue.h, semantics in
// sgc_fast/contrast.py):
//   contrast_normalise     ct = cam / total, total = w.cam + eps (per sample), ct written in float32 or float64
//   contrast_epilogue      logits from the stats, and the stats packed into one float64 buffer for the backward
//   contrast_coefficients  the coefficient matrices of the backward's gradient fields, from the packed stats and
//                          the logits' gradient
//   contrast_unnormalise   chain d/d(ct) to d/d(cam)
//   warp_matrices          the per-sample CGC warp matrices, entry by entry (no index gathers)
//   contrast_lowres_stats / _grads  the unmasked (CGC) closed forms, one pass per sample
// Each is one pass over tiny tensors; together they replace ~60 small ATen ops per forward + backward.
// Reductions are sequential per sample/row: results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "contrast_glue.h"
#include "glue_checks.h"

#include <tuple>
#include <vector>

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

// Two-stage separable product: out = (P c Q^T) with transposes as asked, through the scratch t [h, w].
void sep(const double* P, const double* c, const double* Q, int64_t h, int64_t w, bool trans, double* t, double* out) {
  for (int64_t a = 0; a < h; ++a)
    for (int64_t b = 0; b < w; ++b) t[a * w + b] = glue::left_entry(P, c, h, w, a, b, trans);
  for (int64_t a = 0; a < h; ++a)
    for (int64_t b = 0; b < w; ++b) out[a * w + b] = glue::right_entry(t, Q, w, a, b, trans);
}

double inner(const double* x, const double* y, int64_t n) {
  double s = 0.0;
  for (int64_t p = 0; p < n; ++p) s += x[p] * y[p];
  return s;
}

using LowresStats = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

LowresStats contrast_lowres_stats_cpu(const at::Tensor& ct_aug_in, const at::Tensor& ct_orig_in,
                                      const at::Tensor& ct_neg_in, const at::Tensor& uy_in, const at::Tensor& ux_in,
                                      const at::Tensor& vy_in, const at::Tensor& vx_in, const at::Tensor& my_in,
                                      const at::Tensor& mx_in, const at::Tensor& weight_in, double eps) {
  check_lowres(ct_aug_in, ct_orig_in, ct_neg_in, uy_in, ux_in, vy_in, vx_in, my_in, mx_in, weight_in);
  const at::Tensor ca = ct_aug_in.contiguous(), co = ct_orig_in.contiguous(), cq = ct_neg_in.contiguous(),
                   uy = uy_in.contiguous(), ux = ux_in.contiguous(), vy = vy_in.contiguous(), vx = vx_in.contiguous(),
                   my = my_in.contiguous(), mx = mx_in.contiguous(), wt = weight_in.contiguous();
  const int64_t B = ca.size(0), h = ca.size(1), w = ca.size(2), N = cq.size(0), H = uy.size(0), W = ux.size(0);
  const int64_t hw = h * w, NQ = N > 0 ? N : B;
  const bool warped = vy.size(0) > 1;
  const double tail = eps * eps * static_cast<double>(H * W);
  const auto opts = ca.options();
  at::Tensor gram = at::empty({B, NQ}, opts), pos = at::empty({B}, opts), na = at::empty({B}, opts),
             np = at::empty({B}, opts), nq = at::empty({NQ}, opts), m = at::empty({B + N, h, w}, opts),
             uv = at::empty({B, h, w}, opts), vv = at::empty({B, h, w}, opts), col = at::empty({B, h, w}, opts),
             ay = at::empty({B, h, h}, opts), ax = at::empty({B, w, w}, opts), r = at::empty({B + N}, opts);
  const double *pa = ca.const_data_ptr<double>(), *po = co.const_data_ptr<double>(), *pq = cq.const_data_ptr<double>(),
               *puy = uy.const_data_ptr<double>(), *pux = ux.const_data_ptr<double>(),
               *pvy = vy.const_data_ptr<double>(), *pvx = vx.const_data_ptr<double>(),
               *pmy = my.const_data_ptr<double>(), *pmx = mx.const_data_ptr<double>(), *pw = wt.const_data_ptr<double>();
  double *pm = m.mutable_data_ptr<double>(), *puv = uv.mutable_data_ptr<double>(), *pvv = vv.mutable_data_ptr<double>(),
         *pcol = col.mutable_data_ptr<double>(), *pay = ay.mutable_data_ptr<double>(), *pax = ax.mutable_data_ptr<double>(),
         *pr = r.mutable_data_ptr<double>(), *ppos = pos.mutable_data_ptr<double>(), *pna = na.mutable_data_ptr<double>(),
         *pnp = np.mutable_data_ptr<double>(), *pnq = nq.mutable_data_ptr<double>();
  at::parallel_for(0, B + N, 1, [&](int64_t i0, int64_t i1) {
    std::vector<double> t(hw), cy(h * h), cx(w * w), coly(h), colx(w);
    for (int64_t item = i0; item < i1; ++item) {
      if (item >= B) {  // a separate negative: M c, its total and squared norm
        const int64_t k = item - B;
        const double* c = pq + k * hw;
        double* mk = pm + item * hw;
        sep(pmy, c, pmx, h, w, false, t.data(), mk);
        pr[item] = inner(c, pw, hw);
        pnq[k] = inner(c, mk, hw) + 2 * eps * pr[item] + tail;
        continue;
      }
      const int64_t i = item;
      const double* vyi = pvy + (warped ? i : 0) * H * h;
      const double* vxi = pvx + (warped ? i : 0) * W * w;
      double* ayi = pay + i * h * h;
      double* axi = pax + i * w * w;
      for (int64_t a = 0; a < h; ++a)
        for (int64_t b = 0; b < h; ++b) {
          ayi[a * h + b] = glue::gram_entry(puy, vyi, H, h, h, a, b);
          cy[a * h + b] = glue::gram_entry(vyi, vyi, H, h, h, a, b);
        }
      for (int64_t a = 0; a < w; ++a)
        for (int64_t b = 0; b < w; ++b) {
          axi[a * w + b] = glue::gram_entry(pux, vxi, W, w, w, a, b);
          cx[a * w + b] = glue::gram_entry(vxi, vxi, W, w, w, a, b);
        }
      for (int64_t a = 0; a < h; ++a) coly[a] = glue::col_sum(vyi, H, h, a);
      for (int64_t b = 0; b < w; ++b) colx[b] = glue::col_sum(vxi, W, w, b);
      const double* c_aug = pa + i * hw;
      const double* c_orig = po + i * hw;
      double *mi = pm + i * hw, *uvi = puv + i * hw, *vvi = pvv + i * hw, *coli = pcol + i * hw;
      sep(pmy, c_aug, pmx, h, w, false, t.data(), mi);
      sep(ayi, c_orig, axi, h, w, false, t.data(), uvi);
      sep(cy.data(), c_orig, cx.data(), h, w, false, t.data(), vvi);
      for (int64_t a = 0; a < h; ++a)
        for (int64_t b = 0; b < w; ++b) coli[a * w + b] = coly[a] * colx[b];
      const double r_aug = inner(c_aug, pw, hw), rho = inner(c_orig, coli, hw);
      pr[i] = r_aug;
      ppos[i] = inner(c_aug, uvi, hw) + eps * (r_aug + rho) + tail;
      pna[i] = inner(c_aug, mi, hw) + 2 * eps * r_aug + tail;
      pnp[i] = inner(c_orig, vvi, hw) + 2 * eps * rho + tail;
    }
  });
  // Gram: M c_aug_i against the columns (the negatives, else the augmented CAMs).
  const double* cols = N > 0 ? pq : pa;
  const double* rc = N > 0 ? pr + B : pr;
  double* pg = gram.mutable_data_ptr<double>();
  at::parallel_for(0, B, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = 0; j < NQ; ++j)
        pg[i * NQ + j] = inner(pm + i * hw, cols + j * hw, hw) + eps * (pr[i] + rc[j]) + tail;
  });
  if (N == 0) nq.copy_(na);
  return {gram, pos, na, np, nq, m, uv, vv, col, ay, ax};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrast_lowres_grads_cpu(
    const at::Tensor& ct_aug_in, const at::Tensor& m_in, const at::Tensor& uv_in, const at::Tensor& vv_in,
    const at::Tensor& col_in, const at::Tensor& ay_in, const at::Tensor& ax_in, const at::Tensor& weight_in, double eps,
    const at::Tensor& caa_in, const at::Tensor& caq_in, const at::Tensor& cqa_in, const at::Tensor& cqq_in,
    const at::Tensor& cap_in, const at::Tensor& cpa_in, const at::Tensor& cpp_in) {
  check_lowres_grads(ct_aug_in, m_in, uv_in, vv_in, col_in, ay_in, ax_in, weight_in, caa_in, caq_in, cqa_in, cqq_in,
                     cap_in, cpa_in, cpp_in);
  const int64_t B = ct_aug_in.size(0), h = ct_aug_in.size(1), w = ct_aug_in.size(2), hw = h * w;
  const int64_t N = m_in.size(0) - B;
  auto c = [](const at::Tensor& t) { return t.contiguous(); };
  const at::Tensor ca = c(ct_aug_in), m = c(m_in), uv = c(uv_in), vv = c(vv_in), col = c(col_in), ay = c(ay_in),
                   ax = c(ax_in), wt = c(weight_in), caa = c(caa_in), caq = c(caq_in), cqa = c(cqa_in),
                   cqq = c(cqq_in), cap = c(cap_in), cpa = c(cpa_in), cpp = c(cpp_in);
  const auto opts = ca.options();
  at::Tensor g_aug = at::empty({B, h, w}, opts), g_orig = at::empty({B, h, w}, opts), g_neg = at::empty({N, h, w}, opts);
  const double *pa = ca.const_data_ptr<double>(), *pm = m.const_data_ptr<double>(), *puv = uv.const_data_ptr<double>(),
               *pvv = vv.const_data_ptr<double>(), *pcol = col.const_data_ptr<double>(),
               *pay = ay.const_data_ptr<double>(), *pax = ax.const_data_ptr<double>(), *pw = wt.const_data_ptr<double>(),
               *paa = caa.const_data_ptr<double>(), *paq = caq.const_data_ptr<double>(),
               *pqa = cqa.const_data_ptr<double>(), *pqq = cqq.const_data_ptr<double>(),
               *pap = cap.const_data_ptr<double>(), *ppa = cpa.const_data_ptr<double>(),
               *ppp = cpp.const_data_ptr<double>();
  double *ga = g_aug.mutable_data_ptr<double>(), *go = g_orig.mutable_data_ptr<double>(),
         *gq = g_neg.mutable_data_ptr<double>();
  at::parallel_for(0, 2 * B + N, 1, [&](int64_t i0, int64_t i1) {
    std::vector<double> t(hw), vt(hw);
    for (int64_t item = i0; item < i1; ++item) {
      if (item < B) {  // g_aug_i = sum_j C_aa[i,j] U^T a_j + c_ap_i U^T p_i + sum_k C_aq[i,k] U^T q_k
        const int64_t i = item;
        for (int64_t p = 0; p < hw; ++p) {
          double s = 0.0;
          for (int64_t j = 0; j < B; ++j) s += paa[i * B + j] * (pm[j * hw + p] + eps * pw[p]);
          s += pap[i] * (puv[i * hw + p] + eps * pw[p]);
          double sq = 0.0;
          for (int64_t k = 0; k < N; ++k) sq += paq[i * N + k] * (pm[(B + k) * hw + p] + eps * pw[p]);
          ga[i * hw + p] = N > 0 ? s + sq : s;
        }
      } else if (item < 2 * B) {  // g_orig_i = c_pa_i V_i^T a_i + c_pp_i V_i^T p_i
        const int64_t i = item - B;
        sep(pay + i * h * h, pa + i * hw, pax + i * w * w, h, w, true, t.data(), vt.data());
        for (int64_t p = 0; p < hw; ++p) {
          const double e1 = eps * pcol[i * hw + p];
          go[i * hw + p] = ppa[i] * (vt[p] + e1) + ppp[i] * (pvv[i * hw + p] + e1);
        }
      } else {  // g_neg_k = sum_i C_qa[k,i] U^T a_i + c_qq_k U^T q_k
        const int64_t k = item - 2 * B;
        for (int64_t p = 0; p < hw; ++p) {
          double s = 0.0;
          for (int64_t i = 0; i < B; ++i) s += pqa[k * B + i] * (pm[i * hw + p] + eps * pw[p]);
          gq[k * hw + p] = s + pqq[k] * (pm[(B + k) * hw + p] + eps * pw[p]);
        }
      }
    }
  });
  return {g_aug, g_orig, g_neg};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgc_fast, CPU, m) {
  m.impl("contrast_normalise", &contrast_normalise_cpu);
  m.impl("contrast_epilogue", &contrast_epilogue_cpu);
  m.impl("contrast_coefficients", &contrast_coefficients_cpu);
  m.impl("contrast_unnormalise", &contrast_unnormalise_cpu);
  m.impl("warp_matrices", &warp_matrices_cpu);
  m.impl("contrast_lowres_stats", &contrast_lowres_stats_cpu);
  m.impl("contrast_lowres_grads", &contrast_lowres_grads_cpu);
}

}  // namespace sgc_fast
