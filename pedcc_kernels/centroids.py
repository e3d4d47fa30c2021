"""Pre-defined evenly-distributed class centroids (DESIGN §3): closed forms, the iterative
generators and quality statistics. Files: centroid_files.py; optimisers: sphere_repulsion.py."""
import math

import torch

from .binary_codes import code_capacity, gold_code_centroids
from ._validate import FLOAT_DTYPES, check_float_matrix, check_int, check_scalar
from .nbody import IMPLS
from .reference import normalize_rows
from .sphere_repulsion import charge_model, repulsion
from .spherical_bounds import max_cos_lower_bound

METHODS = ("auto", "simplex", "orthoplex", "repulsion", "pedcc", "code", "random")
ITERATIVE_MAX_ITERS = {"repulsion": 3000, "pedcc": 200}
# Rows per block of the chunked statistics: the (rows x C) Gram block stays near this many bytes.
STATS_BLOCK_BYTES = 64 << 20

__all__ = ["METHODS", "centroid_stats", "generate_centroids", "max_cos_lower_bound", "orthoplex_centroids",
           "random_centroids", "run_optimiser", "simplex_centroids"]


def random_orthonormal_columns(dim, k, generator):
    """(dim, k) float64 with orthonormal columns, Haar-distributed (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(dim, k, dtype=torch.float64, generator=generator))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))[None, :]


def simplex_centroids(num_classes, dim, generator):
    """C <= d+1 vertices of a regular simplex, randomly rotated: every cosine is -1/(C-1)."""
    if num_classes > dim + 1:
        raise ValueError(f"a simplex holds at most dim+1={dim + 1} classes, got num_classes={num_classes}")
    if num_classes == 1:
        return normalize_rows(torch.randn(1, dim, dtype=torch.float64, generator=generator))
    # Rows of an orthonormal basis of the complement of the all-ones vector in R^C are the centred
    # standard basis vectors expressed in C-1 coordinates.
    basis, _ = torch.linalg.qr(torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes)
    vertices = normalize_rows(basis[:, : num_classes - 1])
    return vertices @ random_orthonormal_columns(dim, num_classes - 1, generator).t()


def orthoplex_centroids(num_classes, dim, generator):
    """C <= 2d points +-e_k of the cross-polytope, randomly rotated: max cosine 0."""
    if num_classes > 2 * dim:
        raise ValueError(f"an orthoplex holds at most 2*dim={2 * dim} classes, got num_classes={num_classes}")
    axes = (num_classes + 1) // 2
    frame = random_orthonormal_columns(dim, axes, generator).t()
    return torch.cat([frame, -frame[: num_classes - axes]], dim=0)


def random_centroids(num_classes, dim, generator):
    """C normalised Gaussian vectors (float32): the baseline every method must beat."""
    return normalize_rows(torch.randn(num_classes, dim, dtype=torch.float32, generator=generator))


# Above this many classes 'auto' takes the binary code where it holds them: the optimiser's O(C^2 d)
# iterations stop paying. At C=10000, d=512 repulsion beats the code (max cos 0.0519 against 0.0607,
# converged after 408 s on a 2-core CPU); at C=100000 it was still at 0.12-0.14 after 25-103 s on an H200
# (benchmarks/results), where the code gives 0.0607 in 0.66 s on the 2-core CPU.
CODE_ABOVE = 20000


def resolve_method(method, num_classes, dim):
    """The concrete method 'auto' stands for: simplex (C <= d+1), orthoplex (C <= 2d), the binary
    code for C > CODE_ABOVE when it holds C classes in dim, repulsion otherwise."""
    if method != "auto":
        return method
    if num_classes <= dim + 1:
        return "simplex"
    if num_classes <= 2 * dim:
        return "orthoplex"
    if CODE_ABOVE < num_classes <= code_capacity(dim):
        return "code"
    return "repulsion"


def generate_centroids(num_classes, dim, *, method="auto", seed=0, device=None, dtype=torch.float32,
                       max_iters=None, time_limit=None, impl=None, progress=False):
    """C unit vectors in R^d spread as evenly as possible (largest pairwise cosine small).

    Args:
        num_classes: C >= 1; dim: d >= 1.
        method: 'auto' (simplex for C <= d+1, orthoplex for C <= 2d, beyond that the binary code
            for C > 20000 where it holds C classes (dim >= 511: up to 262144), else repulsion), 'simplex',
            'orthoplex' (closed forms, optimal, randomly rotated), 'repulsion' (N-body optimiser
            aimed at the largest cosine, stops when it stops improving), 'pedcc' (the authors'
            charge model, a fixed number of iterations), 'code' (a binary code: up to 4^m classes
            for the largest odd m with 2^m - 1 <= dim, max cos (2^((m+1)/2) - 1)/(2^m - 1), e.g.
            262144 classes at 0.0607 in dim 511 or 512, no iterations; see binary_codes.py),
            'random' (normalised Gaussian).
        seed: the same seed gives the same centroids (on the same device and thread count: the
            iterative methods amplify rounding differences between BLAS builds).
        device: where the iterative methods run and the result lives (default CPU).
        dtype: of the result (the optimisers keep float32 positions).
        max_iters: cap on force evaluations of the iterative methods (default 3000 for
            'repulsion', 200 for 'pedcc' as in the authors' code).
        time_limit: seconds after which 'repulsion' returns its best point set so far (None: run
            until it converges or reaches max_iters; (10000, 512) converged after 408 s on a 2-core
            CPU).
        impl: the force implementation of the iterative methods ('auto', 'simt', 'tensor_core',
            'triton'; see `nbody_forces`); None: nbody.default_impl of the device.
        progress: show a progress bar (iteration, largest cosine, time) for the iterative methods.

    Returns:
        (C, d) tensor of unit rows, on `device`, in `dtype`.
    """
    check_int("num_classes", num_classes, 1)
    check_int("dim", dim, 1)
    check_int("seed", seed, 0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    if max_iters is not None:
        check_int("max_iters", max_iters, 1)
    if time_limit is not None:
        check_scalar("time_limit", time_limit, low=0)
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be None or one of {IMPLS}, got {impl!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for but torch sees no CUDA device")
    method = resolve_method(method, num_classes, dim)
    generator = torch.Generator().manual_seed(seed)
    if method == "simplex":
        points = simplex_centroids(num_classes, dim, generator)
    elif method == "orthoplex":
        points = orthoplex_centroids(num_classes, dim, generator)
    elif method == "code":
        points = gold_code_centroids(num_classes, dim, generator, dtype=torch.promote_types(torch.float32, dtype))
    else:
        points = random_centroids(num_classes, dim, generator)
        if method in ITERATIVE_MAX_ITERS:
            points = run_optimiser(method, points.to(device), max_iters=max_iters, time_limit=time_limit,
                                   impl=impl, progress=progress).points
    points = points.to(device)
    return normalize_rows(points.to(torch.promote_types(points.dtype, dtype))).to(dtype)


def run_optimiser(method, start, *, max_iters=None, time_limit=None, impl=None, progress=False):
    """The iterative method ('repulsion' or 'pedcc') from the (C, d) `start` on its device, with
    generate_centroids' defaults (max_iters None: ITERATIVE_MAX_ITERS[method]; time_limit only
    applies to 'repulsion'). Returns the optimiser's OptimiserResult (points, history, engine, ...)."""
    iters = max_iters if max_iters is not None else ITERATIVE_MAX_ITERS[method]
    if method == "repulsion":
        return repulsion(start, max_iters=iters, time_limit=time_limit, impl=impl, progress=progress)
    return charge_model(start, max_iters=iters, impl=impl, progress=progress)


@torch.no_grad()
def centroid_stats(centroids, *, block_rows=None):
    """Quality of a set of centroids, computed in row blocks (no C x C matrix): O(block * C) memory.

    Args:
        centroids: (C, d) float tensor on any device (rows are normalised first; float64 stays
            float64, other dtypes are measured in float32).
        block_rows: rows per Gram block; default keeps a block near 64 MB.

    Returns:
        dict of floats: max_cos (largest cosine between two different rows; -1 for C = 1), min_dist
        (smallest Euclidean distance between normalised rows), mean_cos (mean over pairs i != j),
        bound (the best known lower bound on max_cos for this C and d: simplex value for C <= d+1,
        0 for C <= 2d, Levenshtein's bound beyond).
    """
    check_float_matrix("centroids", centroids)
    x = normalize_rows(centroids.to(torch.float64 if centroids.dtype == torch.float64 else torch.float32))
    c, d = x.shape
    if block_rows is None:
        block_rows = max(1, min(c, STATS_BLOCK_BYTES // (c * x.element_size())))
    max_cos = -1.0
    if c > 1:
        best = torch.full((), -math.inf, dtype=x.dtype, device=x.device)
        for r0 in range(0, c, block_rows):
            gram = x[r0:r0 + block_rows] @ x.t()
            rows = torch.arange(gram.shape[0], device=x.device)
            gram[rows, rows + r0] = -math.inf
            best = torch.maximum(best, gram.max())
        max_cos = float(best)
    total = x.sum(0)
    mean_cos = float(((total @ total) - (x * x).sum()) / (c * (c - 1))) if c > 1 else float("nan")
    return {
        "max_cos": max_cos,
        "min_dist": math.sqrt(max(0.0, 2.0 - 2.0 * max_cos)) if c > 1 else float("inf"),
        "mean_cos": mean_cos,
        "bound": max_cos_lower_bound(c, d),
    }
