"""Builds pedcc_kernels._C: the C++ CPU ops always, the CUDA sources when torch has CUDA and nvcc exists.

Install with `pip install --no-build-isolation -e .` so that the torch already installed is used.
"""
import glob
import os
import shutil

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def find_cuda_home():
    """CUDA_HOME, else the standard install location, else the folder above nvcc's real binary."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "bin", "nvcc")):
            return c
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def want_cuda():
    if os.environ.get("PEDCC_NO_CUDA", "0") == "1":
        return False
    if torch.version.cuda is None:
        return False
    cuda_home = find_cuda_home()
    if cuda_home is None:
        print("pedcc_kernels: torch has CUDA but nvcc was not found; building the CPU extension only")
        return False
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported; a wrapper `nvcc` on PATH makes
    # its own guess wrong, so set it before the CUDA helpers are imported.
    os.environ["CUDA_HOME"] = cuda_home
    if not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    return True


def cxx_standard():
    """torch >= 2.14 headers need C++20; older ones build with C++17."""
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return "-std=c++20" if (major, minor) >= (2, 14) else "-std=c++17"


def extension():
    cxx_flags = ["-O3", cxx_standard()]
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    if want_cuda():
        import torch.utils.cpp_extension as ce

        ce.CUDA_HOME = os.environ["CUDA_HOME"]
        cu_sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
        print(f"pedcc_kernels: building with CUDA from {ce.CUDA_HOME}: {cu_sources}")
        return ce.CUDAExtension(
            "pedcc_kernels._C",
            sources + cu_sources,
            define_macros=[("PEDCC_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", cxx_standard(), "--use_fast_math", "-lineinfo"]},
        )
    print("pedcc_kernels: building the CPU extension only")
    return CppExtension("pedcc_kernels._C", sources, extra_compile_args={"cxx": cxx_flags})


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
