// Argument checks of the glue ops (contrast_normalise, contrast_epilogue, contrast_coefficients,
// contrast_unnormalise), shared by their CPU and CUDA kernels (host code only).
#pragma once

#include <ATen/ATen.h>

#include "contrast_glue.h"

namespace sgc_fast {

inline void check_normalise(const at::Tensor& cam, const at::Tensor& weight, at::ScalarType dtype) {
  TORCH_CHECK(cam.dim() == 3, "cam: expected [B, h, w], got shape ", cam.sizes());
  TORCH_CHECK(at::isFloatingType(cam.scalar_type()), "cam: expected a floating dtype, got ", cam.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == cam.size(1) && weight.size(1) == cam.size(2) &&
                  weight.scalar_type() == at::kDouble,
              "weight: expected float64 [", cam.size(1), ", ", cam.size(2), "], got ", weight.scalar_type(), " ",
              weight.sizes());
  TORCH_CHECK(weight.device() == cam.device(), "weight: on ", weight.device(), ", cam on ", cam.device());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "dtype: expected float32 or float64, got ", dtype);
}

// self_index as a contiguous int64 tensor (undefined when absent), for the kernels to read.
inline at::Tensor self_index_long(const c10::optional<at::Tensor>& self_index) {
  return self_index.has_value() ? self_index->to(at::kLong).contiguous() : at::Tensor();
}

// Returns NQ.
inline int64_t check_epilogue(const at::Tensor& gram, const at::Tensor& pos, const at::Tensor& na,
                              const at::Tensor& np, const at::Tensor& nq, const c10::optional<at::Tensor>& self_index,
                              bool separate, double temperature, at::ScalarType dtype) {
  TORCH_CHECK(gram.dim() == 2, "gram: expected [B, NQ], got shape ", gram.sizes());
  const int64_t B = gram.size(0), NQ = gram.size(1);
  TORCH_CHECK(separate || NQ == B, "gram: expected [B, B] without separate negatives, got ", gram.sizes());
  for (const at::Tensor* t : {&gram, &pos, &na, &np, &nq}) {
    TORCH_CHECK(t->scalar_type() == at::kDouble, "contrast_epilogue: expected float64 stats, got ", t->scalar_type());
    TORCH_CHECK(t->device() == gram.device(), "contrast_epilogue: stats on ", t->device(), " and ", gram.device());
  }
  TORCH_CHECK(pos.dim() == 1 && pos.size(0) == B, "pos: expected [", B, "], got ", pos.sizes());
  TORCH_CHECK(na.dim() == 1 && na.size(0) == B, "norm_aug: expected [", B, "], got ", na.sizes());
  TORCH_CHECK(np.dim() == 1 && np.size(0) == B, "norm_orig: expected [", B, "], got ", np.sizes());
  TORCH_CHECK(nq.dim() == 1 && nq.size(0) == NQ, "norm_neg: expected [", NQ, "], got ", nq.sizes());
  if (self_index.has_value()) {
    TORCH_CHECK(separate, "self_index: given without separate negatives");
    TORCH_CHECK(self_index->dim() == 1 && self_index->size(0) == B && !at::isFloatingType(self_index->scalar_type()),
                "self_index: expected an integer [", B, "] tensor, got ", self_index->scalar_type(), " ",
                self_index->sizes());
    TORCH_CHECK(self_index->device() == gram.device(), "self_index: on ", self_index->device());
  }
  TORCH_CHECK(temperature > 0, "temperature: expected > 0, got ", temperature);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "dtype: expected float32 or float64, got ", dtype);
  return NQ;
}

// Returns NQ.
inline int64_t check_coefficients(const at::Tensor& packed, const at::Tensor& grad,
                                  const c10::optional<at::Tensor>& self_index, bool separate, double temperature) {
  TORCH_CHECK(grad.dim() == 2 && grad.size(1) >= 1, "grad_logits: expected [B, 1 + negatives], got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble,
              "grad_logits: expected float32 or float64, got ", grad.scalar_type());
  const int64_t B = grad.size(0), NQ = separate ? grad.size(1) - 1 : B;
  TORCH_CHECK(separate || grad.size(1) == B, "grad_logits: expected [", B, ", ", B, "], got ", grad.sizes());
  TORCH_CHECK(packed.dim() == 1 && packed.scalar_type() == at::kDouble && packed.size(0) == glue::packed_numel(B, NQ),
              "stats: expected float64 [", glue::packed_numel(B, NQ), "], got ", packed.scalar_type(), " ",
              packed.sizes());
  TORCH_CHECK(packed.device() == grad.device(), "stats: on ", packed.device(), ", grad_logits on ", grad.device());
  if (self_index.has_value()) {
    TORCH_CHECK(separate, "self_index: given without separate negatives");
    TORCH_CHECK(self_index->dim() == 1 && self_index->size(0) == B && !at::isFloatingType(self_index->scalar_type()),
                "self_index: expected an integer [", B, "] tensor, got ", self_index->sizes());
    TORCH_CHECK(self_index->device() == grad.device(), "self_index: on ", self_index->device());
  }
  TORCH_CHECK(temperature > 0, "temperature: expected > 0, got ", temperature);
  return NQ;
}

inline void check_unnormalise(const at::Tensor& grad_ct, const at::Tensor& cam, const at::Tensor& total,
                              const at::Tensor& weight) {
  TORCH_CHECK(cam.dim() == 3 && at::isFloatingType(cam.scalar_type()), "cam: expected a floating [B, h, w], got ",
              cam.scalar_type(), " ", cam.sizes());
  TORCH_CHECK(grad_ct.sizes() == cam.sizes() && grad_ct.scalar_type() == at::kDouble,
              "grad_ct: expected float64 ", cam.sizes(), ", got ", grad_ct.scalar_type(), " ", grad_ct.sizes());
  TORCH_CHECK(total.dim() == 1 && total.size(0) == cam.size(0) && total.scalar_type() == at::kDouble,
              "total: expected float64 [", cam.size(0), "], got ", total.scalar_type(), " ", total.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == cam.size(1) && weight.size(1) == cam.size(2) &&
                  weight.scalar_type() == at::kDouble,
              "weight: expected float64 [", cam.size(1), ", ", cam.size(2), "], got ", weight.sizes());
  for (const at::Tensor* t : {&grad_ct, &total, &weight})
    TORCH_CHECK(t->device() == cam.device(), "contrast_unnormalise: tensors on ", t->device(), " and ", cam.device());
}

// The unmasked closed forms: float64 [B, h, w] CAMs, [N, h, w] negatives (N may be 0), Uy [H, h], Ux [W, w],
// Vy [1 or B, H, h], Vx [1 or B, W, w], My [h, h], Mx [w, w], weight [h, w], all on one device.
inline void check_lowres(const at::Tensor& ct_aug, const at::Tensor& ct_orig, const at::Tensor& ct_neg,
                         const at::Tensor& uy, const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx,
                         const at::Tensor& my, const at::Tensor& mx, const at::Tensor& weight) {
  TORCH_CHECK(ct_aug.dim() == 3 && ct_orig.sizes() == ct_aug.sizes(), "ct_orig: shape ", ct_orig.sizes(),
              " does not match ct_aug ", ct_aug.sizes());
  const int64_t B = ct_aug.size(0), h = ct_aug.size(1), w = ct_aug.size(2);
  TORCH_CHECK(ct_neg.dim() == 3 && ct_neg.size(1) == h && ct_neg.size(2) == w, "ct_neg: expected [N, ", h, ", ", w,
              "], got ", ct_neg.sizes());
  TORCH_CHECK(uy.dim() == 2 && uy.size(1) == h, "uy: expected [H, ", h, "], got ", uy.sizes());
  TORCH_CHECK(ux.dim() == 2 && ux.size(1) == w, "ux: expected [W, ", w, "], got ", ux.sizes());
  const int64_t H = uy.size(0), W = ux.size(0);
  TORCH_CHECK(vy.dim() == 3 && (vy.size(0) == 1 || vy.size(0) == B) && vy.size(1) == H && vy.size(2) == h,
              "vy: expected [1 or B, H, h], got ", vy.sizes());
  TORCH_CHECK(vx.dim() == 3 && vx.size(0) == vy.size(0) && vx.size(1) == W && vx.size(2) == w,
              "vx: expected [", vy.size(0), ", W, w], got ", vx.sizes());
  TORCH_CHECK(my.dim() == 2 && my.size(0) == h && my.size(1) == h, "my: expected [h, h], got ", my.sizes());
  TORCH_CHECK(mx.dim() == 2 && mx.size(0) == w && mx.size(1) == w, "mx: expected [w, w], got ", mx.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == h && weight.size(1) == w, "weight: expected [h, w], got ",
              weight.sizes());
  for (const at::Tensor* t : {&ct_aug, &ct_orig, &ct_neg, &uy, &ux, &vy, &vx, &my, &mx, &weight}) {
    TORCH_CHECK(t->scalar_type() == at::kDouble, "contrast_lowres: expected float64 tensors, got ", t->scalar_type());
    TORCH_CHECK(t->device() == ct_aug.device(), "contrast_lowres: tensors on ", t->device(), " and ", ct_aug.device());
  }
}

inline void check_lowres_grads(const at::Tensor& ct_aug, const at::Tensor& m, const at::Tensor& uv, const at::Tensor& vv,
                               const at::Tensor& col, const at::Tensor& ay, const at::Tensor& ax,
                               const at::Tensor& weight, const at::Tensor& caa, const at::Tensor& caq,
                               const at::Tensor& cqa, const at::Tensor& cqq, const at::Tensor& cap,
                               const at::Tensor& cpa, const at::Tensor& cpp) {
  TORCH_CHECK(ct_aug.dim() == 3, "ct_aug: expected [B, h, w], got ", ct_aug.sizes());
  const int64_t B = ct_aug.size(0), h = ct_aug.size(1), w = ct_aug.size(2);
  TORCH_CHECK(m.dim() == 3 && m.size(0) >= B && m.size(1) == h && m.size(2) == w, "m: expected [B + N, ", h, ", ", w,
              "], got ", m.sizes());
  const int64_t N = m.size(0) - B;
  for (const at::Tensor* t : {&uv, &vv, &col})
    TORCH_CHECK(t->sizes() == ct_aug.sizes(), "uv, vv, col: expected ", ct_aug.sizes(), ", got ", t->sizes());
  TORCH_CHECK(ay.dim() == 3 && ay.size(0) == B && ay.size(1) == h && ay.size(2) == h, "ay: expected [B, h, h], got ",
              ay.sizes());
  TORCH_CHECK(ax.dim() == 3 && ax.size(0) == B && ax.size(1) == w && ax.size(2) == w, "ax: expected [B, w, w], got ",
              ax.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == h && weight.size(1) == w, "weight: expected [h, w]");
  TORCH_CHECK(caa.dim() == 2 && caa.size(0) == B && caa.size(1) == B, "coef_aa: expected [B, B], got ", caa.sizes());
  TORCH_CHECK(caq.dim() == 2 && caq.size(0) == B && caq.size(1) == N, "coef_aq: expected [B, N], got ", caq.sizes());
  TORCH_CHECK(cqa.dim() == 2 && cqa.size(0) == N && cqa.size(1) == B, "coef_qa: expected [N, B], got ", cqa.sizes());
  TORCH_CHECK(cqq.dim() == 1 && cqq.size(0) == N, "coef_qq: expected [N], got ", cqq.sizes());
  for (const at::Tensor* t : {&cap, &cpa, &cpp})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "coef_ap, coef_pa, coef_pp: expected [B], got ", t->sizes());
  for (const at::Tensor* t : {&ct_aug, &m, &uv, &vv, &col, &ay, &ax, &weight, &caa, &caq, &cqa, &cqq, &cap, &cpa, &cpp}) {
    TORCH_CHECK(t->scalar_type() == at::kDouble, "contrast_lowres_grads: expected float64 tensors, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == ct_aug.device(), "contrast_lowres_grads: tensors on ", t->device(), " and ",
                ct_aug.device());
  }
}

inline void check_warp(const at::Tensor& crop, const at::Tensor& flip, int64_t H, int64_t W, int64_t h, int64_t w) {
  TORCH_CHECK(crop.dim() == 2 && crop.size(1) == 4 && !at::isFloatingType(crop.scalar_type()),
              "crop: expected an integer [B, 4] tensor, got ", crop.scalar_type(), " ", crop.sizes());
  TORCH_CHECK(flip.dim() == 1 && flip.size(0) == crop.size(0) && flip.scalar_type() == at::kBool,
              "flip: expected a bool [", crop.size(0), "] tensor, got ", flip.scalar_type(), " ", flip.sizes());
  TORCH_CHECK(flip.device() == crop.device(), "flip: on ", flip.device(), ", crop on ", crop.device());
  TORCH_CHECK(H > 0 && W > 0 && h > 0 && w > 0, "size: expected positive H, W, h, w, got ", H, ", ", W, ", ", h, ", ",
              w);
}

}  // namespace sgc_fast
