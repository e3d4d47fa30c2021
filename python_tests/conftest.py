"""Test setup. Triton reads TRITON_INTERPRET when a kernel is defined, so it is set here, before the
package is imported, whenever no GPU is present."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
TOLERANCE = {torch.float32: 5e-4, torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-10}


def assert_close_to_truth(fast, same_dtype_ref, truth, dtype, what=""):
    """DESIGN §6: |fast - truth| <= |reference_in_same_dtype - truth| + tol, elementwise, with tol
    relative to the size of the true values."""
    fast, same_dtype_ref, truth = (t.detach().double().cpu() for t in (fast, same_dtype_ref, truth))
    scale = max(1.0, truth.abs().max().item())
    allowed = (same_dtype_ref - truth).abs() + TOLERANCE[dtype] * scale
    err = (fast - truth).abs()
    worst = (err - allowed).max().item()
    assert worst <= 0, (f"{what}: error {err.max().item():.3e} exceeds the allowed "
                        f"{allowed.max().item():.3e} (dtype {dtype})")


@pytest.fixture
def device():
    return DEVICE
