// Checks and helpers shared by the CPU and CUDA kernels of the same ops (host code only).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <string>

namespace sgc_fast {

enum class CamKind { kHiRes, kGrad };

inline CamKind parse_kind(c10::string_view kind) {
  if (kind == "hires") return CamKind::kHiRes;
  if (kind == "grad") return CamKind::kGrad;
  TORCH_CHECK(false, "kind: expected 'hires' or 'grad', got '", std::string(kind), "'");
}

inline void check_cam_inputs(const at::Tensor& feats, const at::Tensor& grads) {
  TORCH_CHECK(feats.dim() == 4, "feats: expected [B, K, h, w], got shape ", feats.sizes());
  TORCH_CHECK(grads.dim() == 4 || grads.dim() == 2, "grads: expected [B, K, h, w] or [B, K], got shape ",
              grads.sizes());
  TORCH_CHECK(grads.size(0) == feats.size(0) && grads.size(1) == feats.size(1) &&
                  (grads.dim() == 2 || (grads.size(2) == feats.size(2) && grads.size(3) == feats.size(3))),
              "grads: shape ", grads.sizes(), " does not match feats ", feats.sizes());
  TORCH_CHECK(feats.device() == grads.device(), "grads: on ", grads.device(), ", feats on ", feats.device());
}

#define SGC_DISPATCH_PAIR(A_TYPE, G_TYPE, NAME, ...)                                              \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A_TYPE, NAME, [&] {                   \
    using feats_t = scalar_t;                                                                     \
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G_TYPE, NAME, [&] {                 \
      using grads_t = scalar_t;                                                                   \
      __VA_ARGS__();                                                                              \
    });                                                                                           \
  })

inline at::ScalarType cam_dtype(const at::Tensor& feats, const at::Tensor& grads) {
  return (feats.scalar_type() == at::kDouble || grads.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

inline void check_sweep_inputs(const at::Tensor& cam_aug, const at::Tensor& cam_orig, const at::Tensor& mask,
                        const at::Tensor& uy, const at::Tensor& ux, const at::Tensor& vy, const at::Tensor& vx,
                        const at::Tensor& neg_cam, const at::Tensor& neg_mask) {
  TORCH_CHECK(cam_aug.dim() == 3 && cam_orig.sizes() == cam_aug.sizes(), "cam_orig: shape ", cam_orig.sizes(),
              " does not match cam_aug ", cam_aug.sizes());
  const int64_t B = cam_aug.size(0), h = cam_aug.size(1), w = cam_aug.size(2);
  TORCH_CHECK(uy.dim() == 2 && uy.size(1) == h, "uy: expected [H, ", h, "], got ", uy.sizes());
  TORCH_CHECK(ux.dim() == 2 && ux.size(1) == w, "ux: expected [W, ", w, "], got ", ux.sizes());
  const int64_t H = uy.size(0), W = ux.size(0);
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == B && mask.size(1) == H && mask.size(2) == W &&
                  mask.scalar_type() == at::kByte,
              "mask: expected uint8 [", B, ", ", H, ", ", W, "], got ", mask.scalar_type(), " ", mask.sizes());
  TORCH_CHECK(vy.dim() == 3 && (vy.size(0) == 1 || vy.size(0) == B) && vy.size(1) == H && vy.size(2) == h,
              "vy: expected [1 or B, H, h], got ", vy.sizes());
  TORCH_CHECK(vx.dim() == 3 && vx.size(0) == vy.size(0) && vx.size(1) == W && vx.size(2) == w,
              "vx: expected [", vy.size(0), ", W, w], got ", vx.sizes());
  TORCH_CHECK(neg_cam.dim() == 3 && neg_cam.size(1) == h && neg_cam.size(2) == w, "neg_cam: expected [N, ", h, ", ",
              w, "], got ", neg_cam.sizes());
  TORCH_CHECK(neg_mask.dim() == 3 && neg_mask.size(0) == neg_cam.size(0) &&
                  (neg_cam.size(0) == 0 || (neg_mask.size(1) == H && neg_mask.size(2) == W)) &&
                  neg_mask.scalar_type() == at::kByte,
              "neg_mask: expected uint8 [N, H, W], got ", neg_mask.scalar_type(), " ", neg_mask.sizes());
  TORCH_CHECK(cam_orig.scalar_type() == cam_aug.scalar_type() && neg_cam.scalar_type() == cam_aug.scalar_type(),
              "cam_orig, neg_cam: expected the dtype of cam_aug (", cam_aug.scalar_type(), ")");
  const auto dev = cam_aug.device();
  for (const at::Tensor* t : {&cam_orig, &mask, &uy, &ux, &vy, &vx, &neg_cam, &neg_mask})
    TORCH_CHECK(t->device() == dev, "contrast_sweep: every tensor must be on ", dev, ", got one on ", t->device());
}

}  // namespace sgc_fast
