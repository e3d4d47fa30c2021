"""The N-body force op (csrc/ops.cpp CPU kernel, csrc/nbody.cu on a GPU) and its chunked-torch twin,
against a dense float64 computation written out here."""
import math

import pytest
import torch

from conftest import assert_close_to_truth
from pedcc_kernels import _ext
from pedcc_kernels.nbody import nbody_forces, nbody_forces_torch

needs_ext = pytest.mark.skipif(not _ext.available(), reason="pedcc_kernels._C is not built")
needs_cuda_op = pytest.mark.skipif(not (torch.cuda.is_available() and _ext.has_cuda_kernels()),
                                   reason="needs a GPU and the extension built with its CUDA kernels")

# (potential, param); lse at t = 0.01 sends cosines above 0.6 into the linear continuation.
POTENTIALS = [("coulomb", 1.0), ("riesz", 4.0), ("riesz", 0.5), ("lse", 0.2), ("lse", 0.01), ("hinge", 0.1),
              ("hinge", -0.3)]
# (2100, 6): three row tiles of the CPU op (1024 rows each at most), several column blocks each.
SHAPES = [(1, 5), (2, 3), (37, 7), (130, 33), (2100, 6)]


def random_points(c, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c, d, dtype=torch.float64, generator=g)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def dense_truth(points, potential, param, shift=0.0):
    """forces, max_cos, energy in float64 from the full C x C Gram matrix."""
    x = points.double()
    c = x.shape[0]
    cos = x @ x.t()
    if potential == "lse":
        u = (cos - shift) / param
        cap = 60.0
        phi = torch.where(u > cap, math.exp(cap) * (1 + u - cap), torch.exp(u.clamp_max(cap)))
        dphi = torch.where(u > cap, torch.full_like(u, math.exp(cap)), torch.exp(u.clamp_max(cap))) / param
    elif potential == "hinge":
        phi = (cos - param).clamp_min(0) ** 2
        dphi = 2 * (cos - param).clamp_min(0)
    else:
        s = 1.0 if potential == "coulomb" else param
        r2 = (2 - 2 * cos).clamp_min(1e-6)
        phi = r2 ** (-s / 2)
        dphi = s * r2 ** (-s / 2 - 1)
    off = ~torch.eye(c, dtype=torch.bool)
    phi, dphi = phi * off, dphi * off
    pull = dphi @ x
    forces = -(pull - (pull * x).sum(1, keepdim=True) * x)
    masked = cos.masked_fill(~off, -math.inf)
    return forces, masked.max(1).values, phi.sum(1)


def check_against_truth(result, points, potential, param, dtype, what):
    truth = dense_truth(points, potential, param)
    same_dtype = nbody_forces_torch(points.to(dtype), potential, param)
    for name, fast, ref, true in zip(("forces", "max_cos", "energy"), result, same_dtype, truth):
        assert fast.dtype == dtype and fast.shape == true.shape, name
        if points.shape[0] == 1 and name == "max_cos":
            assert fast.item() == -math.inf
            continue
        assert_close_to_truth(fast, ref, true, dtype, f"{what} {name} {potential}({param})")


@needs_ext
@pytest.mark.parametrize("potential,param", POTENTIALS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_op_matches_dense_float64(potential, param, shape, dtype):
    points = random_points(*shape, seed=shape[0] * 31 + shape[1])
    result = nbody_forces(points.to(dtype), potential, param)
    check_against_truth(result, points.to(dtype).double(), potential, param, dtype, "cpu op")


@pytest.mark.parametrize("potential,param", POTENTIALS)
@pytest.mark.parametrize("chunk", [1, 16, None])
def test_torch_twin_matches_dense_float64(potential, param, chunk):
    points = random_points(53, 9, seed=chunk or 0)
    result = nbody_forces_torch(points, potential, param, chunk)
    truth = dense_truth(points, potential, param)
    for name, fast, true in zip(("forces", "max_cos", "energy"), result, truth):
        torch.testing.assert_close(fast, true, rtol=1e-10, atol=1e-10, msg=name)


def largest_cosine(points):
    cos = points.double() @ points.double().t()
    return cos.fill_diagonal_(-math.inf).max().item()


@needs_ext
@pytest.mark.parametrize("temperature", [0.002, 0.01])
@pytest.mark.parametrize("offset", [0.0, -0.03, 0.02])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shifted_lse_matches_dense_float64(temperature, offset, dtype):
    """The optimiser's form: a temperature far below the cosines with the shift near the largest
    cosine, above or below it (unshifted, at t = 0.002 every cosine above 0.12 is capped)."""
    points = random_points(130, 33, seed=5).to(dtype)
    shift = largest_cosine(points) + offset
    truth = dense_truth(points.double(), "lse", temperature, shift)
    twin = nbody_forces_torch(points, "lse", temperature, shift=shift)
    for result, what in ((nbody_forces(points, "lse", temperature, shift=shift), "cpu op"), (twin, "torch twin")):
        for name, fast, ref, true in zip(("forces", "max_cos", "energy"), result, twin, truth):
            assert_close_to_truth(fast, ref, true, dtype, f"{what} {name} shift {offset}")
    if temperature > 0.005:
        return
    # The shift is what makes this work: unshifted, the force is the capped one, far from the truth.
    capped = nbody_forces(points, "lse", temperature)[0].double()
    assert (capped / capped.norm() - truth[0] / truth[0].norm()).norm().item() > 0.1


# bf16 operands: the Gram product also comes back in bf16 (2^-9 of each cosine), which the steep
# potentials amplify into the forces (r^-s at r = 0.4, the closest pair at (37, 7)); 3% of their scale
# up to s = 2 (r^-4 loses 6% there: bf16 operands do not suit steep potentials on close points).
BF16_OPERANDS_TOLERANCE = 0.03
BF16_CASES = [("coulomb", 1.0, None), ("riesz", 2.0, None), ("lse", 0.05, None), ("lse", 0.005, 0.0),
              ("lse", 0.002, -0.01), ("hinge", 0.05, None), ("hinge", -0.2, None)]


def check_bf16_operands_against_truth(points, potential, param, offset, run, tolerance=BF16_OPERANDS_TOLERANCE):
    """Runs run(points, shift) -> (forces, max_cos, energy) of an implementation with bf16 operands and
    checks each output against float64: no further from the truth than the exact math on the
    bf16-rounded points, plus `tolerance` of the largest true value (a single point: zero forces and
    energy, max_cos -inf). Returns the outputs (on their device) and the shift used."""
    shift = 0.0 if offset is None or points.shape[0] == 1 else largest_cosine(points) + offset
    fast = run(points, shift)
    rounded = dense_truth(points.bfloat16().double(), potential, param, shift)
    truth = dense_truth(points.double(), potential, param, shift)
    for name, a, ref, true in zip(("forces", "max_cos", "energy"), fast, rounded, truth):
        assert a.dtype == torch.float32 and a.shape == true.shape, name
        a = a.cpu().double()
        if points.shape[0] == 1:
            assert a.item() == -math.inf if name == "max_cos" else a.abs().max().item() == 0, name
            continue
        scale = true.abs().max().item()
        err = (a - true).abs()
        allowed = (ref - true).abs() + tolerance * scale
        assert (err <= allowed).all(), f"{name} {potential}({param}): error {err.max().item():.3e} / {scale:.3e}"
    return fast, shift


@needs_ext
@pytest.mark.parametrize("potential,param,offset", BF16_CASES)
@pytest.mark.parametrize("shape", [(1, 4), (37, 7), (300, 130), (2100, 24)])
@pytest.mark.parametrize("impl", ["tensor_core", "bf16x3"])
def test_cpu_bf16_operands_match_dense_float64(potential, param, offset, shape, impl):
    """impl='tensor_core' and 'bf16x3' on CPU (bf16 operands, split ones for the cosines of the latter)
    against float64: no further from the truth than the exact math on the bf16-rounded points, plus
    the tolerance above."""
    points = random_points(*shape, seed=11, dtype=torch.float32)
    fast, shift = check_bf16_operands_against_truth(
        points, potential, param, offset, lambda p, s: nbody_forces(p, potential, param, impl=impl, shift=s))
    if shape[0] > 1 and impl == "tensor_core":  # the operands really are bf16: cosines move in the 4th digit
        exact = nbody_forces(points, potential, param, shift=shift)[1]
        assert (fast[1] - exact).abs().max().item() > 1e-6


@needs_ext
def test_cpu_op_counts_every_pair_once_over_uneven_tiles():
    """Rows with four entries +-1/2 have cosines in multiples of 1/4, and the hinge at -1 sums (c + 1)^2:
    every product and energy term is exact, so the statistics must equal float64's exactly. 5000 float64
    points make 838-row tiles: their diagonal blocks straddle the 256-column blocks."""
    g = torch.Generator().manual_seed(8)
    c, d = 5000, 16
    points = torch.zeros(c, d, dtype=torch.float64)
    support = torch.rand(c, d, generator=g).argsort(dim=1)[:, :4]
    signs = torch.randint(0, 2, (c, 4), generator=g).double() * 2 - 1
    points.scatter_(1, support, signs / 2)
    forces, max_cos, energy = nbody_forces(points, "hinge", -1.0)
    true_forces, true_max, true_energy = dense_truth(points, "hinge", -1.0)
    assert torch.equal(max_cos, true_max) and torch.equal(energy, true_energy)
    torch.testing.assert_close(forces, true_forces, rtol=1e-12, atol=1e-9)


@needs_ext
@pytest.mark.parametrize("impl", ["tensor_core", "bf16x3"])
@pytest.mark.parametrize("shift", [5.0, -40.0, 1e30])
def test_cpu_bf16_shift_beyond_the_cosines(impl, shift):
    """A shift no cosine can reach is not put into the bf16 product (c - shift would round to
    2^-9 |shift|): the largest cosines stay those of plain bf16 operands."""
    points = random_points(300, 64, seed=2, dtype=torch.float32)
    truth = dense_truth(points.double(), "coulomb", 1.0)[1]
    fast = nbody_forces(points, "lse", 10.0, impl=impl, shift=shift)[1].double()
    assert (fast - truth).abs().max().item() < 4e-3


@needs_ext
@pytest.mark.parametrize("shape", [(300, 130), (2100, 64)])
@pytest.mark.parametrize("offset", [0.0, 2e-3, -1e-3])
def test_cpu_split_bf16_cosines_near_the_shift(shape, offset):
    """impl='bf16x3' is for the optimiser's end phase: lse with the shift near the largest cosine.
    There its largest cosines are good to about 1e-6 (split operands), while plain bf16 operands are
    off by about 1e-4; away from the shift the bf16 product's rounding, 2^-9 of c - shift, remains."""
    points = random_points(*shape, seed=4, dtype=torch.float32)
    truth_max = dense_truth(points.double(), "coulomb", 1.0)[1]
    shift = truth_max.max().item() + offset
    split = nbody_forces(points, "lse", 1e-3, impl="bf16x3", shift=shift)[1].double()
    plain = nbody_forces(points, "lse", 1e-3, impl="tensor_core", shift=shift)[1].double()
    allowed = 1e-5 + 2.0 ** -8 * (truth_max - shift).abs()
    assert ((split - truth_max).abs() <= allowed).all(), (split - truth_max).abs().max().item()
    top = truth_max > truth_max.max() - 0.01  # rows whose largest cosine sits near the shift
    assert (split - truth_max)[top].abs().max().item() < 2e-5
    assert (plain - truth_max)[top].abs().max().item() > 5e-5  # what the split buys


@needs_ext
def test_single_point_and_pair():
    one = random_points(1, 4)
    forces, max_cos, energy = nbody_forces(one, "coulomb", 1.0)
    assert forces.abs().max().item() == 0 and max_cos.item() == -math.inf and energy.item() == 0
    pair = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64)
    forces, max_cos, energy = nbody_forces(pair, "coulomb", 1.0)
    torch.testing.assert_close(max_cos, torch.tensor([0.6, 0.6], dtype=torch.float64))
    torch.testing.assert_close(energy, torch.full((2,), 1 / math.sqrt(0.8), dtype=torch.float64))
    # Tangential: no radial part, and each point is pushed away from the other (dot with it drops).
    assert (forces * pair).sum(1).abs().max().item() < 1e-12
    assert (forces * pair.flip(0)).sum(1).max().item() < 0


@needs_ext
@pytest.mark.parametrize("potential,param", [("lse", 0.1), ("coulomb", 1.0)])
@pytest.mark.parametrize("dtype,impl", [(torch.float64, "auto"), (torch.float32, "auto"),
                                        (torch.float32, "tensor_core"), (torch.float32, "bf16x3")])
def test_nan_in_gives_nan_out(potential, param, dtype, impl):
    # float32 lse takes the branch-free loop of the CPU op, the others the generic one.
    points = random_points(40, 4, dtype=dtype)
    points[2, 1] = float("nan")
    forces, _, energy = nbody_forces(points, potential, param, impl=impl)
    assert torch.isnan(energy).all() and torch.isnan(forces).any()


@needs_ext
@pytest.mark.parametrize("bad,exc", [
    (lambda: nbody_forces([[1.0, 0.0]]), TypeError),
    (lambda: nbody_forces(torch.ones(3)), ValueError),
    (lambda: nbody_forces(torch.ones(0, 3)), ValueError),
    (lambda: nbody_forces(torch.ones(2, 3, dtype=torch.int64)), TypeError),
    (lambda: nbody_forces(torch.ones(2, 3, dtype=torch.float16)), TypeError),
    (lambda: nbody_forces(torch.eye(3), "gravity"), ValueError),
    (lambda: nbody_forces(torch.eye(3), "riesz", 0.0), ValueError),
    (lambda: nbody_forces(torch.eye(3), "lse", -1.0), ValueError),
    (lambda: nbody_forces(torch.eye(3), "hinge", 1.5), ValueError),
    (lambda: nbody_forces(torch.eye(3), "lse", "hot"), TypeError),
    (lambda: nbody_forces(torch.eye(3), impl="fast"), ValueError),
    (lambda: nbody_forces(torch.eye(3), "coulomb", 1.0, shift=0.5), ValueError),
    (lambda: nbody_forces(torch.eye(3), "lse", 0.1, shift=math.inf), ValueError),
    (lambda: nbody_forces(torch.eye(3), "lse", 0.1, shift="max"), TypeError),
    (lambda: nbody_forces_torch(torch.eye(3), chunk=0), ValueError),
])
def test_bad_input_is_rejected(bad, exc):
    with pytest.raises(exc):
        bad()


@needs_ext
@pytest.mark.parametrize("args,exc", [
    ((torch.eye(3), "gravity", 1.0), ValueError),
    ((torch.eye(3), "riesz", -2.0), ValueError),
    ((torch.eye(3), "coulomb", 1.0, "warp"), ValueError),
    ((torch.ones(3), "coulomb", 1.0), ValueError),
    ((torch.eye(3).half(), "coulomb", 1.0), TypeError),
    ((torch.eye(3), "hinge", 0.1, "auto", 0.5), ValueError),
    ((torch.eye(3), "lse", 0.1, "auto", math.nan), ValueError),
])
def test_raw_op_checks_its_arguments(args, exc):
    with pytest.raises(exc):
        torch.ops.pedcc.nbody_forces(*args)


@needs_ext
@pytest.mark.parametrize("args", [("coulomb", 1.0, "auto", 0.0), ("lse", 0.01, "tensor_core", 0.3),
                                  ("hinge", 0.1, "simt", 0.0), ("lse", 0.01, "bf16x3", 0.3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_registration_passes_opcheck(args, dtype):
    """Schema, fake (meta) implementation and dispatch agree, so the op traces under torch.compile."""
    points = random_points(20, 6, seed=1, dtype=dtype)
    torch.library.opcheck(torch.ops.pedcc.nbody_forces.default, (points, *args))


@needs_ext
def test_missing_cuda_kernels_explain_how_to_build(monkeypatch):
    monkeypatch.setattr(_ext, "has_cuda_kernels", lambda: False)
    with pytest.raises(RuntimeError, match="TORCH_CUDA_ARCH_LIST"):
        _ext.require("cuda")


# --- GPU: the CUDA kernels against the CPU op and float64 ------------------------------------------
SIMT_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@needs_cuda_op
@pytest.mark.parametrize("impl", ["simt", "auto"])
@pytest.mark.parametrize("shape", [(1, 8), (3, 5), (257, 129), (1000, 512), (300, 1700)])
@pytest.mark.parametrize("potential,param", [("coulomb", 1.0), ("lse", 0.05), ("hinge", 0.05)])
def test_cuda_op_matches_cpu_op(impl, shape, potential, param):
    points = random_points(*shape, seed=7, dtype=torch.float32)
    cpu = nbody_forces(points, potential, param)
    gpu = nbody_forces(points.cuda(), potential, param, impl=impl)
    for name, a, b in zip(("forces", "max_cos", "energy"), gpu, cpu):
        scale = max(1.0, b[torch.isfinite(b)].abs().max().item()) if torch.isfinite(b).any() else 1.0
        torch.testing.assert_close(a.cpu() / scale, b / scale, **SIMT_TOLERANCE, msg=f"{impl} {name}")


@needs_cuda_op
def test_cuda_shifted_lse_matches_cpu_op():
    points = random_points(1000, 512, seed=3, dtype=torch.float32)
    shift = largest_cosine(points)
    cpu = nbody_forces(points, "lse", 0.002, shift=shift)
    gpu = nbody_forces(points.cuda(), "lse", 0.002, impl="simt", shift=shift)
    for name, a, b in zip(("forces", "max_cos", "energy"), gpu, cpu):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.cpu() / scale, b / scale, **SIMT_TOLERANCE, msg=f"simt {name}")


# (257, 129): neither C nor d a multiple of the tiles; (1000, 512): the full 512-feature slice; on an
# H100-class GPU d <= 560 double-buffers the column tiles and (65, 576), (300, 700), (40, 864) take the
# single-buffered path in two slices, the second partly past d (864: the largest d that fits).
@needs_cuda_op
@pytest.mark.parametrize("potential,param,offset", BF16_CASES)
@pytest.mark.parametrize("shape", [(1, 8), (3, 5), (37, 7), (65, 16), (257, 129), (63, 560), (1000, 512), (65, 576),
                                   (300, 700), (40, 864)])
def test_cuda_tensor_core_matches_dense_float64(potential, param, offset, shape):
    """impl='tensor_core' on CUDA (bf16 operands, fp32 accumulation, bf16 weights in the pull) against
    float64: no further from the truth than the exact math on the bf16-rounded points, plus the
    tolerance of the CPU's bf16 operands."""
    points = random_points(*shape, seed=shape[0] + shape[1], dtype=torch.float32)
    fast, shift = check_bf16_operands_against_truth(
        points, potential, param, offset,
        lambda p, s: nbody_forces(p.cuda(), potential, param, impl="tensor_core", shift=s))
    assert all(t.is_cuda for t in fast)
    if shape[0] > 1 and tensor_core_kernel_runs(shape[1]):  # not the SIMT fallback: cosines move a little
        exact = nbody_forces(points.cuda(), potential, param, impl="simt", shift=shift)[1]
        assert (fast[1] - exact).abs().max().item() > 1e-6


def tensor_core_kernel_runs(d):
    """Whether impl='tensor_core' runs the tensor-core kernel at d on this GPU rather than its SIMT
    fallback: sm_80+ and its single-buffered shared memory (csrc/nbody.cu, tc_shared_bytes) within
    the opt-in limit (227 KB on an H100, where d <= 864; less on other GPUs)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    optin = getattr(props, "shared_memory_per_block_optin", 232448)
    dp = -(-d // 16) * 16
    return props.major >= 8 and 2 * 64 * (dp + 8) * 2 + 64 * 72 * 2 <= optin


@needs_cuda_op
def test_cuda_tensor_core_beyond_its_shared_memory_runs_simt():
    # d = 1700 needs more shared memory than any GPU gives a block: the SIMT kernel runs instead.
    points = random_points(300, 1700, seed=5, dtype=torch.float32).cuda()
    fast = nbody_forces(points, "lse", 0.05, impl="tensor_core")
    simt = nbody_forces(points, "lse", 0.05, impl="simt")
    for name, a, b in zip(("forces", "max_cos", "energy"), fast, simt):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@needs_cuda_op
def test_cuda_tensor_core_nan_in_gives_nan_out():
    points = random_points(70, 40, seed=2, dtype=torch.float32)
    points[2, 1] = float("nan")
    forces, _, energy = nbody_forces(points.cuda(), "lse", 0.05, impl="tensor_core")
    assert torch.isnan(energy).all().item() and torch.isnan(forces).any().item()


@needs_ext
@pytest.mark.parametrize("args,message", [
    ((torch.eye(3), "riesz", -2.0), r"must be > 0, got -2\b"),
    ((torch.ones(3), "coulomb", 1.0), r"got shape \(3,\)"),
    ((torch.ones(0, 4), "coulomb", 1.0), r"got shape \(0, 4\)"),
    ((torch.eye(3), "lse", 0.1, "auto", math.inf), "shift must be finite, got inf"),
])
def test_raw_op_messages_name_the_bad_value(args, message):
    # The numbers are formatted without iostreams (see ops.cpp): on one GPU machine streaming them
    # into the message crashed the process instead of raising.
    with pytest.raises(ValueError, match=message):
        torch.ops.pedcc.nbody_forces(*args)
