"""The N-body force op on the sphere (DESIGN §3), the engine of the centroid optimisers.

`nbody_forces` runs the compiled op (torch.ops.pedcc.nbody_forces: CPU kernel, CUDA kernels);
`nbody_forces_torch` is the same math as chunked torch matmuls, used where the extension is missing,
as the cross-check of the tests and as the cuBLAS baseline of the GPU benchmark.
"""
import functools
import math

import torch

from . import _ext
from .kernels import triton_usable
from ._validate import check_int, check_scalar

POTENTIALS = ("coulomb", "riesz", "lse", "hinge")
IMPLS = ("auto", "simt", "tensor_core", "bf16x3", "triton")
# Mirrors csrc/nbody.h: r^2 floor of coulomb/riesz, exponent cap and float32 floor of lse.
MIN_SQUARED_DISTANCE = 1e-6
LSE_EXPONENT_CAP = 60.0
LSE_EXPONENT_FLOOR = -87.0
# Rows per chunk of nbody_forces_torch: the (rows x C) weight block stays near this many bytes.
CHUNK_BYTES = 32 << 20


def _check_potential(potential, param, shift=0.0):
    if potential not in POTENTIALS:
        raise ValueError(f"potential must be one of {POTENTIALS}, got {potential!r}")
    check_scalar("param", param)
    if potential in ("riesz", "lse") and not param > 0:
        name = "the Riesz exponent s" if potential == "riesz" else "the temperature t"
        raise ValueError(f"param ({name}) must be > 0, got {param}")
    if potential == "hinge" and not -1.0 <= param <= 1.0:
        raise ValueError(f"param (the target cosine tau) must lie in [-1, 1], got {param}")
    check_scalar("shift", shift)
    if shift != 0 and potential != "lse":
        raise ValueError(f"shift only applies to the 'lse' potential, got shift={shift} with {potential!r}")


def _check_points(points, allowed_dtypes):
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if points.dim() != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"points must be a non-empty 2-D (C, d) tensor, got shape {tuple(points.shape)}")
    if points.dtype not in allowed_dtypes:
        names = ", ".join(str(t).replace("torch.", "") for t in allowed_dtypes)
        raise TypeError(f"points must be {names} on {points.device.type}, got {points.dtype}")


def nbody_forces(points, potential="coulomb", param=1.0, impl="auto", shift=0.0):
    """Tangential repulsion forces of all pairs, with per-row statistics, in one pass over pairs.

    Args:
        points: (C, d) unit rows; float32 or float64 on CPU, float32 on CUDA.
        potential: pair energy phi of the cosine c: 'coulomb' (1/r, r^2 = 2 - 2c, the authors'
            charge model), 'riesz' (r^-param), 'lse' (exp((c - shift)/param), continued linearly
            above an exponent of 60, and 0 below -87 in float32: a soft maximum of the cosines),
            'hinge' (max(0, c - param)^2: only pairs above the target cosine param push).
        param: the Riesz exponent, the lse temperature or the hinge target (ignored by 'coulomb').
        impl: 'auto' (= 'simt': float32/float64 products) or 'tensor_core': bf16 operands with
            fp32 accumulation (on CUDA mma.sync tensor cores, sm_80+ and d <= 864 on an H100, else
            'simt' runs; on CPU oneDNN); the cosines then carry about 1e-4, the pull's weights
            2^-9 of their value, and the projection stays in the dtype of points. 'bf16x3' (CPU
            only): the Gram product from split bf16 operands (x = hi + lo, three products in one),
            the pull as 'tensor_core'; the cosines carry about 1e-6 where they are near `shift`
            (the bf16 product is c - shift, rounded to 2^-9 of that): the optimiser's end phase at
            about 1.5x the time of 'tensor_core' (lse at C=10000, d=512 on the 2-core CPU: 0.4 s,
            against 0.25 s and 0.83 s for fp32). 'triton': the Triton kernel (kernels/nbody_sweep.py; float32
            CUDA tensors, or any device under TRITON_INTERPRET=1), bf16 operands, fp32 accumulation.
        shift: 'lse' only (else it must be 0): subtracted from the cosine in the exponent. Aiming
            at the largest cosine with a small temperature, pass (an estimate of) that cosine, so
            the weights that matter stay near 1 instead of overflowing.

    Returns:
        forces (C, d) = -(I - x_i x_i^T) sum_{j != i} phi'(x_i.x_j) x_j,
        max_cos (C,) = max_{j != i} x_i.x_j (-inf when C == 1),
        energy (C,) = sum_{j != i} phi(x_i.x_j); all in the dtype of points.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    on_cuda = getattr(points, "is_cuda", False)
    if impl == "bf16x3" and on_cuda:
        raise ValueError("impl='bf16x3' is CPU-only; on CUDA use 'simt' (fp32), 'tensor_core' or 'triton'")
    allowed = (torch.float32,) if on_cuda or impl == "triton" else (torch.float32, torch.float64)
    _check_points(points, allowed)
    _check_potential(potential, param, shift)
    if impl == "triton":
        if not triton_usable(points.device):
            raise ValueError("impl='triton' needs triton installed and CUDA points (or TRITON_INTERPRET=1), "
                             f"got points on {points.device}")
        from .kernels.nbody_sweep import nbody_forces_triton

        return nbody_forces_triton(points, potential, float(param), float(shift))
    ops = _ext.require(points.device.type)
    return ops.nbody_forces(points, potential, float(param), impl, float(shift))


def pair_potential_torch(potential, param, cos, shift=0.0):
    """phi(cos) and phi'(cos) elementwise, the torch twin of pedcc::pair_potential (csrc/nbody.h).
    cos: float tensor of any shape; returns two tensors of its shape and dtype."""
    # In-place chains: the chunked twin runs this on (rows x C) blocks, so each temporary counts.
    if potential == "lse":
        u = (cos - shift).div_(param)
        beyond_cap = (u - LSE_EXPONENT_CAP).clamp_min_(0.0)
        e = u.clamp_max_(LSE_EXPONENT_CAP).exp_()
        if cos.dtype != torch.float64:
            e.masked_fill_(e < math.exp(LSE_EXPONENT_FLOOR), 0.0)
        phi = beyond_cap.mul_(math.exp(LSE_EXPONENT_CAP)).add_(e)  # the tangent line above the cap
        return phi, e.div_(param)
    if potential == "hinge":
        excess = (cos - param).clamp_min_(0.0)  # clamp keeps NaN, as the C++ twin does
        return excess.square(), excess.mul_(2.0)
    s = 1.0 if potential == "coulomb" else float(param)
    r2 = cos.mul(-2.0).add_(2.0).clamp_min_(MIN_SQUARED_DISTANCE)
    phi = r2.pow(-s / 2.0)
    return phi, r2.reciprocal_().mul_(phi).mul_(s)


@torch.no_grad()
def nbody_forces_torch(points, potential="coulomb", param=1.0, chunk=None, shift=0.0):
    """The math of `nbody_forces` as chunked torch matmuls, on any device and float dtype.

    Per chunk of rows: Gram block (rows x C) by one matmul, the pair weights phi' in place, the
    force block by a second matmul. Memory O(chunk * C + C * d).

    Args:
        points: (C, d) unit rows, float32 or float64 (float16/bfloat16 on CUDA).
        potential, param, shift: as for `nbody_forces`.
        chunk: rows per block; default keeps a block near 32 MB.

    Returns:
        forces (C, d), max_cos (C,), energy (C,) as `nbody_forces`.
    """
    _check_points(points, (torch.float16, torch.bfloat16, torch.float32, torch.float64))
    _check_potential(potential, param, shift)
    c, d = points.shape
    if chunk is None:
        chunk = max(16, min(4096, CHUNK_BYTES // max(1, c * points.element_size())))
    check_int("chunk", chunk, 1)
    x = points.contiguous()
    forces = torch.empty_like(x)
    max_cos = x.new_empty((c,))
    energy = x.new_empty((c,))
    for r0 in range(0, c, chunk):
        rows = x[r0:r0 + chunk]
        gram = rows @ x.t()
        diag = torch.arange(rows.shape[0], device=x.device)
        phi, dphi = pair_potential_torch(potential, param, gram, shift)
        phi[diag, diag + r0] = 0
        dphi[diag, diag + r0] = 0
        gram[diag, diag + r0] = -math.inf
        max_cos[r0:r0 + chunk] = gram.max(dim=1).values
        energy[r0:r0 + chunk] = phi.sum(dim=1)
        pull = dphi @ x
        radial = (pull * rows).sum(dim=1, keepdim=True)
        forces[r0:r0 + chunk] = -(pull - radial * rows)
    return forces, max_cos, energy


def default_impl(device):
    """The force implementation the optimisers use on `device` when none is named: on CPU the op's
    bf16-operand 'tensor_core' (2.2x its fp32 rate at C=5000, d=512 on the 2-core CPU of
    benchmarks/results); on a CUDA device with bf16 tensor cores (sm_80+) the Triton kernel when triton
    is installed (6.9x chunked cuBLAS fp32 at C=100000, d=512 on an H200; its force norm, largest
    cosine and energy sum agreed with torch's to 1e-4, rows to bf16-operand precision), else the SIMT
    kernel (the first, tf32 tensor-core CUDA kernel matched the CPU op there but ran 2.5x slower than
    SIMT; its bf16 successor has not run on a GPU yet)."""
    device = torch.device(device)
    if device.type == "cpu":
        return "tensor_core"
    if device.type == "cuda" and triton_usable(device) and torch.cuda.get_device_capability(device)[0] >= 8:
        return "triton"
    return "simt"


def force_engine(device, prefer_compiled=True, impl="auto"):
    """The force function the optimisers call on `device`: the Triton kernel for impl='triton', else
    the compiled op (with `impl`) when it is built for that device type, else `nbody_forces_torch`.
    Returns (callable, name), name one of 'triton', 'op:<impl>', 'torch' (what actually runs); the
    callable takes (points, potential, param, shift=0.0)."""
    device = torch.device(device)
    if impl == "triton":
        return functools.partial(nbody_forces, impl=impl), "triton"
    if prefer_compiled and _ext.available() and (device.type == "cpu" or
                                                 (device.type == "cuda" and _ext.has_cuda_kernels())):
        engine = nbody_forces if impl == "auto" else functools.partial(nbody_forces, impl=impl)
        return engine, f"op:{impl}"
    return nbody_forces_torch, "torch"
