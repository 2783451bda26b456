"""The Triton glue kernels compile for Hopper (sm_90) without a GPU: ahead-of-time ``triton.compile`` down to a
cubin (Triton's bundled ptxas), for every constexpr branch and pointer dtype they are launched with. The
interpreter (tests/triton_interpret_cases.py) checks their values but accepts code the GPU compiler rejects;
this catches that on machines without a GPU."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sgc_fast.triton import contrast_glue_kernel as glue  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def _compile(kernel, signature: dict, constexprs: dict):
    sig = dict(signature)
    sig.update({name: "constexpr" for name in constexprs})
    assert list(sig) == kernel.arg_names, "signature out of date with the kernel's arguments"
    src = ASTSource(kernel, sig, constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()})
    out = triton.compile(src, target=TARGET, options={"num_warps": glue.NUM_WARPS})
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
