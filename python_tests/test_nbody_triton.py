"""The Triton N-body kernel (nbody_forces(..., impl="triton")) against a dense float64 computation.
On a CPU it runs under TRITON_INTERPRET=1 at tiny shapes; on a GPU the same tests run at larger ones,
plus a comparison with the compiled CPU op."""
import math

import pytest
import torch

from conftest import ON_GPU
from pedcc_kernels import _ext
from pedcc_kernels.centroids import centroid_stats, random_centroids
from pedcc_kernels.nbody import nbody_forces
from pedcc_kernels.sphere_repulsion import repulsion
from test_nbody import BF16_CASES, check_bf16_operands_against_truth, largest_cosine, random_points

pytest.importorskip("triton")

DEVICE = "cuda" if ON_GPU else "cpu"
# Both products take bf16 operands (the weights too): the pull carries 2^-9 relative rounding of each
# weight on top of the cosines' (see test_nbody's BF16_OPERANDS_TOLERANCE for the steep potentials).
TOLERANCE = 0.03
# d > 16 runs the interpreter's one config with a K loop and several d slices.
SHAPES = [(1, 4), (3, 5), (37, 7), (45, 40)] + ([(300, 130), (1000, 512)] if ON_GPU else [])


@pytest.mark.parametrize("potential,param,offset", BF16_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_dense_float64(potential, param, offset, shape):
    """No further from the truth than the exact math on the bf16-rounded points, plus TOLERANCE of
    the largest true value."""
    points = random_points(*shape, seed=shape[0] + shape[1], dtype=torch.float32)
    fast, _ = check_bf16_operands_against_truth(
        points, potential, param, offset,
        lambda p, s: nbody_forces(p.to(DEVICE), potential, param, impl="triton", shift=s), tolerance=TOLERANCE)
    assert all(t.device.type == DEVICE for t in fast)


def test_triton_forces_are_tangential_and_push_apart():
    pair = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], device=DEVICE)
    forces, max_cos, energy = nbody_forces(pair, "coulomb", 1.0, impl="triton")
    torch.testing.assert_close(max_cos.cpu(), torch.tensor([0.6, 0.6]), rtol=0, atol=4e-3)
    torch.testing.assert_close(energy.cpu(), torch.full((2,), 1 / math.sqrt(0.8)), rtol=2e-2, atol=0)
    assert (forces * pair).sum(1).abs().max().item() < 1e-6
    assert (forces * pair.flip(0)).sum(1).max().item() < 0


@pytest.mark.parametrize("potential,param", [("coulomb", 1.0), ("lse", 0.05), ("hinge", 0.05)])
def test_triton_nan_in_gives_nan_out(potential, param):
    points = random_points(6, 20, seed=2, dtype=torch.float32)
    points[2, 1] = float("nan")
    forces, _, energy = nbody_forces(points.to(DEVICE), potential, param, impl="triton")
    assert torch.isnan(energy.cpu()).all() and torch.isnan(forces.cpu()).any()


@pytest.mark.parametrize("bad,exc", [
    (lambda: nbody_forces(torch.eye(3, dtype=torch.float64, device=DEVICE), impl="triton"), TypeError),
    (lambda: nbody_forces(torch.ones(3, device=DEVICE), impl="triton"), ValueError),
    (lambda: nbody_forces(torch.eye(3, device=DEVICE), "lse", 0.0, impl="triton"), ValueError),
    (lambda: nbody_forces(torch.eye(3, device=DEVICE), "coulomb", 1.0, impl="triton", shift=0.5), ValueError),
])
def test_triton_rejects_bad_input(bad, exc):
    with pytest.raises(exc):
        bad()


def test_repulsion_runs_on_the_triton_kernel():
    start = random_centroids(60, 6, torch.Generator().manual_seed(5)).to(DEVICE)
    result = repulsion(start, max_iters=40, impl="triton")
    assert result.points.device.type == DEVICE and result.iterations == 40
    assert centroid_stats(result.points)["max_cos"] < centroid_stats(start)["max_cos"] - 0.15


@pytest.mark.skipif(not (ON_GPU and _ext.available()), reason="needs a GPU and the compiled CPU op")
@pytest.mark.parametrize("potential,param,offset", [("coulomb", 1.0, None), ("lse", 0.002, 0.0)])
def test_cuda_triton_matches_cpu_op(potential, param, offset):
    """At the optimiser's scale: the Triton kernel on the GPU against the fp32 CPU op."""
    points = random_points(3000, 512, seed=4, dtype=torch.float32)
    shift = 0.0 if offset is None else largest_cosine(points) + offset
    cpu = nbody_forces(points, potential, param, shift=shift)
    gpu = nbody_forces(points.cuda(), potential, param, impl="triton", shift=shift)
    for name, a, b in zip(("forces", "max_cos", "energy"), gpu, cpu):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.cpu() / scale, b / scale, rtol=3e-2, atol=5e-3, msg=f"triton {name}")
