"""Centroid generation (closed forms, repulsion, the authors' charge model), quality statistics, the
Levenshtein bound, centroid files and the pedcc-centroids command."""
import json
import math

import numpy as np
import pytest
import torch

import pedcc_kernels as pk
from pedcc_kernels import _ext, centroid_files, cli, spherical_bounds
from pedcc_kernels.centroids import METHODS, random_centroids
from pedcc_kernels.sphere_repulsion import charge_model, repulsion


def pairwise_cos(w):
    x = w.double() / w.double().norm(dim=1, keepdim=True)
    g = x @ x.t()
    return g[~torch.eye(len(x), dtype=torch.bool)]


# --- closed forms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("c,d", [(2, 1), (2, 16), (5, 4), (17, 16), (65, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simplex_is_optimal(c, d, dtype):
    w = pk.generate_centroids(c, d, seed=3, dtype=dtype)
    assert w.shape == (c, d) and w.dtype == dtype
    torch.testing.assert_close(w.double().norm(dim=1), torch.ones(c, dtype=torch.float64), rtol=0, atol=1e-6)
    assert (pairwise_cos(w) + 1.0 / (c - 1)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("c,d", [(6, 4), (7, 4), (8, 4), (100, 64), (128, 64)])
def test_orthoplex_is_optimal(c, d):
    w = pk.generate_centroids(c, d, seed=1)
    torch.testing.assert_close(w.double().norm(dim=1), torch.ones(c, dtype=torch.float64), rtol=0, atol=1e-6)
    assert pairwise_cos(w).max().item() <= 1e-6
    assert pk.centroid_stats(w)["bound"] == 0.0


def test_single_class():
    w = pk.generate_centroids(1, 5)
    assert w.shape == (1, 5) and abs(w.norm().item() - 1) < 1e-6
    stats = pk.centroid_stats(w)
    assert stats["max_cos"] == -1.0 and stats["bound"] == -1.0 and math.isnan(stats["mean_cos"])


# --- iterative methods ----------------------------------------------------------------------------
# The op's largest cosine with bf16 operands ('tensor_core' on CPU) is good to 2^-8 at d = 8; with
# split ones ('bf16x3') to 2^-16 of sum_k |x_k y_k| <= 1 near the shift.
HISTORY_PRECISION = {"simt": 1e-6, "tensor_core": 4e-3, "bf16x3": 2e-5}


@pytest.mark.parametrize("impl", ["simt", "tensor_core"])
def test_repulsion_lowers_the_largest_cosine(impl):
    start = random_centroids(150, 8, torch.Generator().manual_seed(0))
    result = repulsion(start, max_iters=120, impl=impl)
    history = result.history
    assert len(history) >= 30
    # Falls on average: the last window sits well below the first, and the best beats the start.
    first, last = np.mean(history[:10]), np.mean(history[-10:])
    assert last < first - 0.1
    stats = pk.centroid_stats(result.points)
    assert stats["max_cos"] <= min(history) + HISTORY_PRECISION[impl]
    assert stats["max_cos"] < pk.centroid_stats(start)["max_cos"] - 0.2
    assert stats["max_cos"] >= stats["bound"] - 1e-9  # a valid lower bound is never beaten
    torch.testing.assert_close(result.points.norm(dim=1), torch.ones(150), rtol=0, atol=1e-5)


def test_torch_fallback_engine_follows_the_op(monkeypatch):
    from pedcc_kernels import _ext, nbody

    start = random_centroids(80, 6, torch.Generator().manual_seed(3))
    with_op = repulsion(start, max_iters=15, engine=nbody.nbody_forces).history
    with_torch = repulsion(start, max_iters=15, engine=nbody.nbody_forces_torch).history
    np.testing.assert_allclose(with_torch, with_op, atol=1e-4)
    monkeypatch.setattr(_ext, "available", lambda: False)
    assert nbody.force_engine("cpu") == (nbody.nbody_forces_torch, "torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("impl", [None, "simt", "tensor_core"])
def test_repulsion_on_the_gpu(impl):
    w = pk.generate_centroids(600, 16, device="cuda", max_iters=200, impl=impl)
    assert w.is_cuda
    stats = pk.centroid_stats(w)
    assert stats["bound"] - 1e-9 <= stats["max_cos"] < pk.centroid_stats(random_centroids(
        600, 16, torch.Generator().manual_seed(0)))["max_cos"] - 0.2


def test_repulsion_ends_on_exact_products():
    # bf16 operands up to beta = exact_from sqrt(d), split ones ('bf16x3') from there: the history's
    # entries from then on are largest cosines good to HISTORY_PRECISION, and the result is the best
    # of them (or better).
    start = random_centroids(150, 8, torch.Generator().manual_seed(1))
    result = repulsion(start, max_iters=150, impl="tensor_core", exact_from=3.0)
    assert result.engine == ("op:tensor_core, then op:bf16x3" if _ext.available() else "torch")
    if not _ext.available():
        return
    never = repulsion(start, max_iters=150, impl="tensor_core", exact_from=None)
    assert never.engine == "op:tensor_core"
    switched_at = next(i for i, (a, b) in enumerate(zip(result.history, never.history)) if a != b)
    exact_part = result.history[switched_at:]
    assert len(exact_part) >= 20
    assert pk.centroid_stats(result.points)["max_cos"] <= min(exact_part) + HISTORY_PRECISION["bf16x3"]
    with pytest.raises(ValueError, match="exact_from"):
        repulsion(start, max_iters=2, exact_from=0.0)


@pytest.mark.skipif(not _ext.available(), reason="needs the compiled op")
def test_repulsion_judges_the_bf16_best_again_when_exact_takes_over(monkeypatch):
    # A bf16 engine that reports every largest cosine 0.5 too low (its forces are right: it shifts the
    # lse back): unless the best of the bf16 phase is judged again exactly at the switch, no exact
    # iterate can beat its flattering value, and the result stays the bf16 phase's best although the
    # exact phase found better points.
    from pedcc_kernels import nbody, sphere_repulsion

    bias = 0.5

    def flattering(points, potential, param, shift=0.0):
        forces, row_max, energy = nbody.nbody_forces(points, potential, param, impl="tensor_core",
                                                     shift=shift + bias)
        return forces, row_max - bias, energy

    monkeypatch.setattr(sphere_repulsion, "_engine", lambda *args, **kwargs: (flattering, "op:tensor_core"))
    start = random_centroids(150, 8, torch.Generator().manual_seed(1))
    result = repulsion(start, max_iters=150, exact_from=4.0)
    never = repulsion(start, max_iters=150, exact_from=None)
    switched_at = next(i for i, (a, b) in enumerate(zip(result.history, never.history)) if a != b)
    exact_part = result.history[switched_at:]
    bf16_best_true = min(never.history[:switched_at]) + bias  # about: its points' exact largest cosine
    assert min(exact_part) < bf16_best_true - 0.005  # the exact phase does find better points
    assert pk.centroid_stats(result.points)["max_cos"] <= min(exact_part) + HISTORY_PRECISION["bf16x3"]


def test_repulsion_stops_on_its_own():
    result = repulsion(random_centroids(40, 4, torch.Generator().manual_seed(2)), max_iters=5000)
    assert result.stop_reason == "converged" and result.iterations < 5000
    # one time stamp per evaluation, increasing, within the run's seconds
    assert len(result.times) == len(result.history) == result.iterations
    assert all(a < b for a, b in zip(result.times, result.times[1:])) and result.times[-1] <= result.seconds


def test_repulsion_time_limit_and_bad_settings():
    start = random_centroids(50, 5, torch.Generator().manual_seed(4))
    result = repulsion(start, time_limit=0.0)
    assert result.stop_reason == "time limit" and result.iterations == 1
    for bad in (dict(sharpness=(5.0, 1.0)), dict(sharpness=(0.0, 1.0)), dict(growth=1.0), dict(window=0),
                dict(patience=0), dict(impl="fast")):
        with pytest.raises(ValueError):
            repulsion(start, max_iters=3, **bad)


def test_repulsion_sharpening_beats_a_fixed_soft_maximum():
    """The rising sharpness is what carries the largest cosine down: frozen at its first value the
    same steps stall well above."""
    start = random_centroids(400, 16, torch.Generator().manual_seed(6))
    annealed = pk.centroid_stats(repulsion(start, max_iters=400).points)["max_cos"]
    frozen = pk.centroid_stats(repulsion(start, max_iters=400, sharpness=(2.0, 2.0)).points)["max_cos"]
    assert annealed < frozen - 0.02


def test_auto_uses_repulsion_beyond_two_d_and_beats_random():
    w = pk.generate_centroids(60, 6, seed=0, max_iters=150)
    baseline = pk.generate_centroids(60, 6, method="random", seed=0)
    assert pk.centroid_stats(w)["max_cos"] < pk.centroid_stats(baseline)["max_cos"] - 0.15


def test_auto_takes_the_code_only_for_many_classes_it_holds():
    from pedcc_kernels.centroids import CODE_ABOVE, resolve_method

    assert resolve_method("auto", 514, 512) == "orthoplex"
    assert resolve_method("auto", CODE_ABOVE, 512) == "repulsion"
    assert resolve_method("auto", CODE_ABOVE + 1, 512) == "code"
    assert resolve_method("auto", 262144, 512) == "code"
    assert resolve_method("auto", 262145, 512) == "repulsion"  # beyond the code's 4^9 words
    assert resolve_method("auto", CODE_ABOVE + 1, 256) == "repulsion"  # m = 7 holds 16384
    assert resolve_method("repulsion", CODE_ABOVE + 1, 512) == "repulsion"


def test_charge_model_spreads_random_points():
    start = random_centroids(100, 16, torch.Generator().manual_seed(0))
    result = charge_model(start, max_iters=100)
    assert result.iterations == 100 and len(result.history) == 100
    assert np.mean(result.history[-10:]) < np.mean(result.history[:10]) - 0.1


@pytest.mark.parametrize("method", ["simplex", "orthoplex", "repulsion", "pedcc", "code", "random"])
def test_same_seed_same_centroids(method):
    c, d = {"simplex": (5, 8), "orthoplex": (5, 8), "code": (30, 8)}.get(method, (30, 4))
    a = pk.generate_centroids(c, d, method=method, seed=11, max_iters=20)
    b = pk.generate_centroids(c, d, method=method, seed=11, max_iters=20)
    other = pk.generate_centroids(c, d, method=method, seed=12, max_iters=20)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)


def test_methods_and_dtypes_are_honoured():
    assert set(METHODS) == {"auto", "simplex", "orthoplex", "repulsion", "pedcc", "code", "random"}
    w = pk.generate_centroids(30, 4, method="pedcc", max_iters=5, dtype=torch.float64)
    assert w.dtype == torch.float64 and w.shape == (30, 4)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(num_classes=0, dim=4), ValueError),
    (dict(num_classes=4.0, dim=4), TypeError),
    (dict(num_classes=4, dim=0), ValueError),
    (dict(num_classes=4, dim=4, method="kmeans"), ValueError),
    (dict(num_classes=9, dim=4, method="simplex"), ValueError),
    (dict(num_classes=9, dim=4, method="orthoplex"), ValueError),
    (dict(num_classes=4, dim=4, seed=-1), ValueError),
    (dict(num_classes=4, dim=4, dtype=torch.int32), TypeError),
    (dict(num_classes=20, dim=4, max_iters=0), ValueError),
    (dict(num_classes=20, dim=4, time_limit=-1.0), ValueError),
    (dict(num_classes=20, dim=4, time_limit="1 min"), TypeError),
    (dict(num_classes=20, dim=4, impl="fast"), ValueError),
    (dict(num_classes=4, dim=4, device="not-a-device"), RuntimeError),
])
def test_generate_rejects_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        pk.generate_centroids(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        pk.generate_centroids(4, 4, device="cuda")


# --- statistics -----------------------------------------------------------------------------------
@pytest.mark.parametrize("block_rows", [1, 7, None])
def test_stats_match_a_dense_computation(block_rows):
    w = torch.randn(50, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    stats = pk.centroid_stats(w, block_rows=block_rows)
    cos = pairwise_cos(w)
    assert stats["max_cos"] == pytest.approx(cos.max().item(), abs=1e-12)
    assert stats["mean_cos"] == pytest.approx(cos.mean().item(), abs=1e-12)
    assert stats["min_dist"] == pytest.approx(math.sqrt(2 - 2 * cos.max().item()), abs=1e-9)
    assert stats["bound"] == spherical_bounds.max_cos_lower_bound(50, 6)


@pytest.mark.parametrize("bad,exc", [([[1.0, 0.0]], TypeError), (torch.ones(3), ValueError),
                                     (torch.ones(0, 3), ValueError), (torch.ones(2, 3, dtype=torch.int64), TypeError)])
def test_stats_reject_bad_input(bad, exc):
    with pytest.raises(exc):
        pk.centroid_stats(bad)


# --- the bound ------------------------------------------------------------------------------------
# Codes known to meet Levenshtein's bound exactly: E8 roots, Leech kissing configuration, the
# icosahedron, the 4600 minimal vectors of O23, 891 points in 22 dims, 56 in 7, 27 in 6 (Schlafli).
TIGHT_CODES = [(240, 8, 0.5), (196560, 24, 0.5), (12, 3, 1 / math.sqrt(5)), (4600, 23, 1 / 3), (891, 22, 0.25),
               (56, 7, 1 / 3), (27, 6, 0.25)]


@pytest.mark.parametrize("c,d,s", TIGHT_CODES)
def test_levenshtein_bound_is_met_by_tight_codes(c, d, s):
    assert spherical_bounds.levenshtein_size_bound(d, s) == pytest.approx(c, rel=1e-9)
    assert spherical_bounds.max_cos_lower_bound(c, d) == pytest.approx(s, abs=1e-9)


@pytest.mark.parametrize("d", [3, 5, 16, 64, 512])
def test_levenshtein_polynomials_are_valid_certificates(d):
    for s in np.linspace(-0.6, 0.6, 13):
        m = spherical_bounds.levenshtein_degree(d, s)
        if m > 20:
            continue
        f = spherical_bounds.levenshtein_polynomial(d, s, m)
        coeffs = spherical_bounds.gegenbauer_coefficients(d, f, m)
        assert coeffs[0] > 0 and (coeffs[1:] >= -1e-9 * np.abs(coeffs).max()).all(), (d, s, m, coeffs)
        nodes = np.linspace(-1, s, 50)
        assert (f(nodes) <= 1e-12).all()


@pytest.mark.parametrize("d", [3, 8, 100])
def test_levenshtein_bound_is_continuous_and_increasing(d):
    ends = [spherical_bounds._interval_end(d, m) for m in range(1, 7)]
    for end in ends:
        below, above = (spherical_bounds.levenshtein_size_bound(d, end + e) for e in (-1e-9, 1e-9))
        assert above == pytest.approx(below, rel=1e-6)
    values = [spherical_bounds.levenshtein_size_bound(d, s) for s in np.linspace(-0.5, 0.9, 40)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_bound_regimes():
    bound = spherical_bounds.max_cos_lower_bound
    assert bound(5, 10) == pytest.approx(-0.25)
    assert bound(20, 10) == 0.0
    for d in (3, 10, 64, 512):
        assert bound(2 * d + 1, d) > 0
        assert bound(4 * d, d) > bound(2 * d + 1, d)
    assert bound(7, 2) == pytest.approx(math.cos(2 * math.pi / 7))
    assert bound(3, 1) == 1.0
    assert 0.02 < bound(10000, 512) < 0.03  # the issue quotes 0.024


# --- files ----------------------------------------------------------------------------------------
def formats():
    out = [".pt", ".npy"]
    try:
        import safetensors  # noqa: F401
        out.append(".safetensors")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("suffix", formats())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_files_round_trip(tmp_path, suffix, dtype):
    w = pk.generate_centroids(12, 5, seed=2, dtype=dtype)
    stats = pk.centroid_stats(w)
    path = tmp_path / f"c{suffix}"
    pk.save_centroids(path, w, method="orthoplex", seed=2, stats=stats)
    loaded, meta = pk.load_centroids(path, with_meta=True)
    assert torch.equal(loaded, w)
    assert meta["C"] == 12 and meta["d"] == 5 and meta["method"] == "orthoplex" and meta["seed"] == 2
    assert meta["stats"]["max_cos"] == pytest.approx(stats["max_cos"])
    assert torch.equal(pk.load_centroids(path, dtype=torch.float64), w.double())


@pytest.mark.parametrize("suffix", formats())
def test_truncated_file_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    pk.save_centroids(path, pk.generate_centroids(40, 30))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        pk.load_centroids(path)


def test_mismatched_metadata_is_a_clear_error(tmp_path):
    path = tmp_path / "c.npy"
    pk.save_centroids(path, pk.generate_centroids(6, 3), method="orthoplex")
    sidecar = centroid_files.sidecar_path(path)
    meta = json.loads(open(sidecar).read())
    meta["d"] = 4
    open(sidecar, "w").write(json.dumps(meta))
    with pytest.raises(ValueError, match="mismatched"):
        pk.load_centroids(path)


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        pk.save_centroids(tmp_path / "c.txt", torch.eye(3))
    with pytest.raises(FileNotFoundError):
        pk.load_centroids(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="set by save_centroids"):
        pk.save_centroids(tmp_path / "c.pt", torch.eye(3), C=4)
    torch.save({"centroids": torch.tensor([[1.0, float("nan")]])}, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="non-finite"):
        pk.load_centroids(tmp_path / "nan.pt")
    np.save(tmp_path / "vec.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        pk.load_centroids(tmp_path / "vec.npy")


# --- command line ---------------------------------------------------------------------------------
def test_cli_generates_and_saves(tmp_path, capsys):
    out = tmp_path / "c.pt"
    code = cli.centroids_main(["--classes", "40", "--dim", "6", "-o", str(out), "--device", "cpu",
                               "--max-iters", "60", "--seed", "5", "--time-limit", "30"])
    assert code == 0
    w, meta = pk.load_centroids(out, with_meta=True)
    assert w.shape == (40, 6) and meta["method"] == "repulsion" and meta["seed"] == 5
    assert meta["stats"]["max_cos"] == pytest.approx(pk.centroid_stats(w)["max_cos"], abs=1e-6)
    printed = capsys.readouterr().out
    assert "max cosine" in printed and "lower bound" in printed


def test_cli_code_method_and_impl(tmp_path, capsys):
    out = tmp_path / "code.npy"
    assert cli.centroids_main(["--classes", "600", "--dim", "40", "-o", str(out), "--method", "code",
                               "--no-progress"]) == 0
    w, meta = pk.load_centroids(out, with_meta=True)
    assert meta["method"] == "code" and w.shape == (600, 40)
    assert meta["stats"]["max_cos"] == pytest.approx(7 / 31, abs=1e-6)  # m = 5 in R^40
    assert cli.centroids_main(["--classes", "30", "--dim", "5", "-o", str(tmp_path / "r.pt"), "--impl", "simt",
                               "--max-iters", "5", "--no-progress"]) == 0
    with pytest.raises(SystemExit) as info:
        cli.centroids_main(["--classes", "30", "--dim", "5", "-o", str(tmp_path / "r.pt"), "--impl", "fast"])
    assert info.value.code == 2 and "--impl" in capsys.readouterr().err


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.centroids_main(["--help"])
    assert info.value.code == 0 and "--classes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.centroids_main(["--classes", "0", "--dim", "4", "-o", str(tmp_path / "c.pt"), "--no-progress"])
    assert info.value.code == 2 and "num_classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.centroids_main(["--classes", "5000", "--dim", "64", "-o", str(tmp_path / "c.csv"), "--no-progress"])
    assert info.value.code == 2 and "unsupported" in capsys.readouterr().err


def test_default_force_impl_per_device(monkeypatch):
    from pedcc_kernels import _ext, nbody

    assert nbody.default_impl("cpu") == "tensor_core"
    monkeypatch.setattr(nbody, "triton_usable", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert nbody.default_impl("cuda") == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert nbody.default_impl("cuda") == "simt"  # no bf16 tensor cores for the Triton kernel
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(nbody, "triton_usable", lambda device: False)
    assert nbody.default_impl("cuda") == "simt"
    start = random_centroids(30, 4, torch.Generator().manual_seed(1))
    expected = "op:tensor_core" if _ext.available() else "torch"
    assert repulsion(start, max_iters=2).engine == expected
    assert charge_model(start, max_iters=2).engine == ("op:auto" if _ext.available() else "torch")
    assert repulsion(start, max_iters=2, engine=nbody.nbody_forces_torch).engine == "custom"
