"""The Triton glue kernels (contrast_glue_kernel, contrast_lowres_kernel, and the sweep's finishing kernels)
compile for Hopper (sm_90) without a GPU: ahead-of-time ``triton.compile`` down to a
cubin (Triton's bundled ptxas), for every constexpr branch and pointer dtype they are launched with. The
interpreter (tests/triton_interpret_cases.py) checks their values but accepts code the GPU compiler rejects;
this catches that on machines without a GPU."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sgc_fast.triton import contrast_glue_kernel as glue  # noqa: E402
from sgc_fast.triton import contrast_lowres_kernel as lowres  # noqa: E402
from sgc_fast.triton import contrast_sweep_kernel as sweep  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def _compile(kernel, signature: dict, constexprs: dict, num_warps: int = glue.NUM_WARPS):
    sig = dict(signature)
    sig.update({name: "constexpr" for name in constexprs})
    assert list(sig) == kernel.arg_names, "signature out of date with the kernel's arguments"
    src = ASTSource(kernel, sig, constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()})
    out = triton.compile(src, target=TARGET, options={"num_warps": num_warps})
    assert len(out.asm["cubin"]) > 0


@pytest.mark.parametrize("in_ty", ["bf16", "fp16", "fp32", "fp64"])
def test_normalise_and_unnormalise_compile(in_ty):
    for out_ty in ("fp32", "fp64"):
        _compile(glue._normalise_kernel, {"cam_ptr": "*" + in_ty, "w_ptr": "*fp64", "scal_ptr": "*fp64",
                                          "ct_ptr": "*" + out_ty, "total_ptr": "*fp64", "n": "i32"}, {"BLOCK": 64})
    _compile(glue._unnormalise_kernel, {"g_ptr": "*fp64", "cam_ptr": "*" + in_ty, "total_ptr": "*fp64",
                                        "w_ptr": "*fp64", "out_ptr": "*" + in_ty, "n": "i32"}, {"BLOCK": 64})


@pytest.mark.parametrize("separate,has_self", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("ty", ["fp32", "fp64"])
def test_epilogue_and_coefficients_compile(separate, has_self, ty):
    stats = {f"{n}_ptr": "*fp64" for n in ("gram", "pos", "na", "np", "nq")}
    _compile(glue._epilogue_kernel, {**stats, "self_ptr": "*i64" if has_self else "*fp64", "scal_ptr": "*fp64",
                                     "out_ptr": "*" + ty, "NQ": "i32", "ncols": "i32"},
             {"SEPARATE": separate, "HAS_SELF": has_self, "BLOCK": 256})
    coefs = {f"{n}_ptr": "*fp64" for n in ("caa", "caq", "cqa", "cqq", "cap", "cpp")}
    _compile(glue._coefficients_kernel, {"stats_ptr": "*fp64", "g_ptr": "*" + ty,
                                         "self_ptr": "*i64" if has_self else "*" + ty, "scal_ptr": "*fp64", **coefs,
                                         "B": "i32", "NQ": "i32", "ncols": "i32"},
             {"SEPARATE": separate, "HAS_SELF": has_self, "BLOCK": 256})


@pytest.mark.parametrize("flip", [False, True])
def test_warp_kernel_compiles(flip):
    _compile(lowres._warp_kernel, {"crop_ptr": "*i64", "flip_ptr": "*i1", "out_ptr": "*fp64", "n": "i32", "m": "i32"},
             {"AXIS": int(flip), "FLIP": flip, "BLOCK": lowres.WARP_BLOCK}, lowres.NUM_WARPS)


@pytest.mark.parametrize("warped", [False, True])
@pytest.mark.parametrize("side", [8, 16])
def test_lowres_kernels_compile(warped, side):
    names = ["ca", "co", "cq", "uy", "ux", "vy", "vx", "my", "mx", "wt", "scal", "m", "uv", "vv", "col", "ay", "ax",
             "r", "pos", "na", "np", "nq"]
    sig = {f"{n}_ptr": "*fp64" for n in names}
    sig.update({"B": "i32", "h": "i32", "w": "i32", "H": "i32", "W": "i32"})
    _compile(lowres._lowres_prep_kernel, sig, {"WARPED": warped, "BH": side, "BW": side}, lowres.NUM_WARPS)
    sig = {f"{n}_ptr": "*fp64" for n in ("m", "cols", "r", "rc", "na", "scal", "gram", "nq")}
    sig.update({"NQ": "i32", "hw": "i32"})
    _compile(lowres._lowres_gram_kernel, sig, {"SEPARATE": warped, "BLOCK": side * side}, lowres.NUM_WARPS)
    names = ["ca", "m", "uv", "vv", "col", "ay", "ax", "wt", "scal", "caa", "caq", "cqa", "cqq", "cap", "cpa", "cpp",
             "ga", "go", "gq"]
    sig = {f"{n}_ptr": "*fp64" for n in names}
    sig.update({"B": "i32", "N": "i32", "h": "i32", "w": "i32"})
    _compile(lowres._lowres_grads_kernel, sig, {"BH": side, "BW": side}, lowres.NUM_WARPS)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("ty", ["fp32", "fp64"])
def test_sweep_finish_kernels_compile(symmetric, ty):
    sig = {"gram_part_ptr": "*" + ty, "norm_part_ptr": "*" + ty, "neg_part_ptr": "*" + ty}
    sig.update({f"{n}_ptr": "*fp64" for n in ("gram", "pos", "na", "np", "nq")})
    sig.update({n: "i32" for n in ("B", "NQ", "gram_chunks", "norm_chunks", "neg_chunks")})
    _compile(sweep._stats_finish_kernel, sig, {"SYMMETRIC": symmetric, "BLOCK": sweep.FINISH_BLOCK}, 4)
    sig = {"m_ptr": "*" + ty, "sm_b": "i32", "r1_ptr": "*" + ty, "r2_ptr": "*" + ty, "out_ptr": "*fp64",
           "H": "i32", "n": "i32", "h": "i32", "w": "i32"}
    _compile(sweep._y_adjoint_kernel, sig, {"HAS_R2": symmetric, "BLOCK": 64}, 4)
