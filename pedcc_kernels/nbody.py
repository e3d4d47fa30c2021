"""The N-body force op on the sphere (DESIGN §3), the engine of the centroid optimisers."""
import torch

from . import _ext

POTENTIALS = ("coulomb", "riesz", "lse")


def nbody_forces(points, potential="coulomb", param=1.0, impl="auto"):
    """Tangential repulsion forces of all pairs, with per-row statistics, in one pass over pairs.

    Args:
        points: (C, d) unit rows; float32 or float64 on CPU, float32 on CUDA.
        potential: pair energy phi of the cosine c: 'coulomb' (1/r, r^2 = 2 - 2c), 'riesz'
            (r^-param), 'lse' (exp((c - 1)/param), a soft maximum of the cosines).
        param: the Riesz exponent or the lse temperature (ignored by 'coulomb').
        impl: CUDA variant, 'auto' | 'simt' | 'tensor_core' (CPU has one).

    Returns:
        forces (C, d) = -(I - x_i x_i^T) sum_{j != i} phi'(x_i.x_j) x_j,
        max_cos (C,) = max_{j != i} x_i.x_j (-inf when C == 1),
        energy (C,) = sum_{j != i} phi(x_i.x_j).
    """
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    ops = _ext.require(points.device.type)
    return ops.nbody_forces(points, potential, float(param), impl)
