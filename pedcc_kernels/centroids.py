"""Pre-defined evenly-distributed class centroids (DESIGN §3): closed forms and quality statistics."""
import math

import torch

from .reference import normalize_rows

METHODS = ("auto", "simplex", "orthoplex")


def _check_sizes(num_classes, dim):
    for name, v in (("num_classes", num_classes), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


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


def generate_centroids(num_classes, dim, *, method="auto", seed=0, device=None, dtype=torch.float32,
                       max_iters=None, progress=False):
    """C unit vectors in R^d spread as evenly as possible.

    Args:
        num_classes: C >= 1; dim: d >= 1.
        method: 'auto' (simplex for C <= d+1, orthoplex for C <= 2d), 'simplex', 'orthoplex'.
        seed: the random rotation's seed; the same seed gives the same centroids.
        device, dtype: of the result.
        max_iters, progress: for the iterative methods.

    Returns:
        (C, d) tensor of unit rows.
    """
    _check_sizes(num_classes, dim)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    generator = torch.Generator().manual_seed(int(seed))
    if method == "auto":
        if num_classes <= dim + 1:
            method = "simplex"
        elif num_classes <= 2 * dim:
            method = "orthoplex"
        else:
            raise ValueError(f"num_classes={num_classes} > 2*dim={2 * dim}: no closed form exists; "
                             "the iterative repulsion method is needed for this size")
    build = simplex_centroids if method == "simplex" else orthoplex_centroids
    points = build(num_classes, dim, generator)
    return normalize_rows(points).to(device=device, dtype=dtype)


def max_cos_lower_bound(num_classes, dim):
    """A lower bound on the largest pairwise cosine of any C unit vectors in R^d.

    -1/(C-1) (simplex, tight for C <= d+1), 0 for d+1 < C <= 2d (Rankin, tight).
    """
    if num_classes <= 1:
        return -1.0
    if num_classes <= dim + 1:
        return -1.0 / (num_classes - 1)
    return 0.0


@torch.no_grad()
def centroid_stats(centroids, *, chunk_size=4096):
    """Quality of a set of centroids, computed in row chunks (no C x C matrix).

    centroids: (C, d) float tensor (rows are normalised first).
    Returns a dict of floats: max_cos (largest cosine between two different rows), min_dist
    (smallest Euclidean distance between normalised rows), mean_cos (mean over pairs i != j), bound
    (the best known lower bound on max_cos for this C and d).
    """
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2 or centroids.shape[0] == 0:
        raise ValueError("centroids must be a non-empty (C, d) tensor")
    x = normalize_rows(centroids.to(torch.float64 if centroids.dtype == torch.float64 else torch.float32))
    c, d = x.shape
    max_cos = -1.0
    if c > 1:
        best = torch.tensor(-float("inf"), dtype=x.dtype, device=x.device)
        for r0 in range(0, c, chunk_size):
            gram = x[r0:r0 + chunk_size] @ x.t()
            rows = torch.arange(gram.shape[0], device=x.device)
            gram[rows, rows + r0] = -float("inf")
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
