// Operator schemas of sgc_fast. Device kernels live in cpu/ and cuda/, one file per op and device,
// and register themselves with TORCH_LIBRARY_IMPL. Python (sgc_fast/ops.py) adds fake kernels and
// autograd.
//
//   batched_cam            CAM of every sample from the target layer's activations and gradients.
//   batched_cam_backward   its gradient w.r.t. feats and grads (not differentiable again).
//   contrast_sweep         masked (SGC) inner products of the full-resolution maps, generated tile by
//                          tile from the h x w CAMs; never writes an H x W map.
//   contrast_sweep_backward  adjoint of contrast_sweep for given coefficient matrices (see
//                          sgc_fast/contrast.py for how the coefficients follow from dlogits).
//   contrast_normalise, contrast_epilogue, contrast_coefficients, contrast_unnormalise
//                          the float64 glue around the sweep (contrast_glue.h): sum normalisation of the
//                          CAMs, logits from the stats, backward coefficients, and the chain back to the
//                          raw CAMs -- one launch each instead of dozens of small ATen ops.
//   warp_matrices          the per-sample CGC warp matrices Vy [B,H,h], Vx [B,W,w] (sgc_fast/interp.py).
//   contrast_lowres_stats, contrast_lowres_grads
//                          the unmasked (CGC) problem in closed form on the h x w grid (contrast.py
//                          lowres_stats / lowres_grads); the stats op also returns the products the
//                          backward reuses (M c_aug | M c_neg, uv, vv, col, Ay, Ax).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// The module exists only so that `import sgc_fast._C` loads this library and its registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(sgc_fast, m) {
  m.def("batched_cam(Tensor feats, Tensor grads, str kind) -> Tensor");
  m.def(
      "batched_cam_backward(Tensor grad_cam, Tensor cam, Tensor feats, Tensor grads, str kind)"
      " -> (Tensor, Tensor)");
  m.def(
      "contrast_sweep(Tensor cam_aug, Tensor cam_orig, Tensor mask, Tensor uy, Tensor ux, Tensor vy,"
      " Tensor vx, Tensor neg_cam, Tensor neg_mask, float eps)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "contrast_sweep_backward(Tensor cam_aug, Tensor cam_orig, Tensor mask, Tensor uy, Tensor ux,"
      " Tensor vy, Tensor vx, Tensor neg_cam, Tensor neg_mask, float eps, Tensor coef_aa,"
      " Tensor coef_aq, Tensor coef_qa, Tensor coef_qq, Tensor coef_ap, Tensor coef_pa,"
      " Tensor coef_pp) -> (Tensor, Tensor, Tensor)");
  m.def("contrast_normalise(Tensor cam, Tensor weight, float eps, ScalarType dtype) -> (Tensor, Tensor)");
  m.def(
      "contrast_epilogue(Tensor gram, Tensor pos, Tensor norm_aug, Tensor norm_orig, Tensor norm_neg,"
      " Tensor? self_index, bool separate, float temperature, ScalarType dtype) -> (Tensor, Tensor)");
  m.def(
      "contrast_coefficients(Tensor stats, Tensor grad_logits, Tensor? self_index, bool separate,"
      " float temperature) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("contrast_unnormalise(Tensor grad_ct, Tensor cam, Tensor total, Tensor weight) -> Tensor");
  m.def("warp_matrices(Tensor crop, Tensor flip, int H, int W, int h, int w) -> (Tensor, Tensor)");
  m.def(
      "contrast_lowres_stats(Tensor ct_aug, Tensor ct_orig, Tensor ct_neg, Tensor uy, Tensor ux, Tensor vy,"
      " Tensor vx, Tensor my, Tensor mx, Tensor weight, float eps)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "contrast_lowres_grads(Tensor ct_aug, Tensor m, Tensor uv, Tensor vv, Tensor col, Tensor ay, Tensor ax,"
      " Tensor weight, float eps, Tensor coef_aa, Tensor coef_aq, Tensor coef_qa, Tensor coef_qq, Tensor coef_ap,"
      " Tensor coef_pa, Tensor coef_pp) -> (Tensor, Tensor, Tensor)");
}
