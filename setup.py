"""Build sgc_fast._C: C++ CPU kernels always; CUDA kernels with FORCE_CUDA=1, or when a CUDA toolkit is
found and torch sees a GPU. TORCH_CUDA_ARCH_LIST is respected; without a visible GPU the default is
"9.0" (Hopper) unless the variable says otherwise."""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = bool(cuda_sources) and CUDA_HOME is not None and (force or torch.cuda.is_available())
    cxx = ["-O3", "-fopenmp"]
    # The extension is built where it runs (pip install -e .), so tune for this processor unless asked not to.
    if os.environ.get("SGC_FAST_PORTABLE", "0") != "1":
        cxx.append("-march=native")
    if os.environ.get("SGC_FAST_DEBUG", "0") == "1":
        cxx = ["-O0", "-g", "-fopenmp"]
    kwargs = dict(
        name="sgc_fast._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        kwargs["define_macros"] = [("SGC_FAST_WITH_CUDA", "1")]
        return [
            CUDAExtension(
                sources=sources + cuda_sources,
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
                **kwargs,
            )
        ]
    return [CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=extensions(), cmdclass=cmdclass())
