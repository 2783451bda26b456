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
