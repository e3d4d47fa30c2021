"""Loads the compiled extension pedcc_kernels._C. Without it the package still imports and the loss
works through torch code; asking for a compiled op explains how to build it."""
import torch

BUILD_HINT = ("pedcc_kernels._C is not built. From the repository root run "
              "`pip install --no-build-isolation -e .` (add CUDA_HOME=/usr/local/cuda and a CUDA build "
              "of torch for the GPU kernels).")

try:
    from . import _C  # noqa: F401  (registers torch.ops.pedcc.*)

    LOAD_ERROR = None
except ImportError as exc:  # the package must import without the extension
    LOAD_ERROR = exc


def available() -> bool:
    return LOAD_ERROR is None


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA sources."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key("pedcc::nbody_forces", "CUDA")


def require(device_type: str = "cpu"):
    """torch.ops.pedcc, or a RuntimeError saying how to build what is missing."""
    if not available():
        raise RuntimeError(f"{BUILD_HINT} (import error: {LOAD_ERROR})")
    if device_type == "cuda" and not has_cuda_kernels():
        raise RuntimeError("pedcc_kernels._C was built without CUDA kernels. Rebuild with a CUDA build of "
                           "torch and nvcc: CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 "
                           "pip install --no-build-isolation -e .")
    return torch.ops.pedcc


if available():
    @torch.library.register_fake("pedcc::nbody_forces")
    def _nbody_forces_fake(points, potential, param, impl="auto", shift=0.0):
        c = points.shape[0]
        return torch.empty_like(points), points.new_empty((c,)), points.new_empty((c,))
