"""Lower bounds on the largest pairwise cosine of C unit vectors in R^d (DESIGN §3).

The bound beyond 2d points is Levenshtein's: a code on S^(d-1) whose largest cosine is s has at most
L(d, s) points, so C points need a largest cosine of at least the s where L(d, s) reaches C. L is
the value f(1)/f_0 of Levenshtein's extremal polynomials in Delsarte's linear programme:

    degree 2k-1:  f(t) = (t - s) K_{k-1}^{1,0}(t, s)^2          for t_{k-1}^{1,1} <= s < t_k^{1,0}
    degree 2k:    f(t) = (t - s) (t + 1) K_{k-1}^{1,1}(t, s)^2  for t_k^{1,0} <= s < t_k^{1,1}

where K_j^{a,b}(t, s) = sum_{i <= j} q_i(t) q_i(s) is the Christoffel-Darboux kernel of the
polynomials q_i orthonormal for the weight (1-t)^(alpha+a) (1+t)^(alpha+b), alpha = (d-3)/2, t_k^{a,b}
is the largest zero of the degree-k one (t_0^{1,1} = -1), and f_0 is the mean of f under the weight
(1-t^2)^alpha of the inner product of two random unit vectors. Everything is computed in float64
from the three-term recurrence of the Jacobi polynomials and Gauss quadrature (Golub-Welsch), so no
special-function library is needed.
"""
import functools
import math

import numpy as np

# Degrees above this are only reached for tiny d and astronomically many points; the bound returned
# there is still valid (L only grows with s), just not the tightest.
MAX_HALF_DEGREE = 100


def _jacobi_recurrence(a, b, count):
    """Monic recurrence p_{k+1} = (t - diag_k) p_k - offdiag_k p_{k-1} for the weight
    (1-t)^a (1+t)^b: returns diag (count,) and offdiag (count,) with offdiag[0] unused."""
    k = np.arange(count, dtype=np.float64)
    s = 2.0 * k + a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        diag = np.where(k == 0, (b - a) / (a + b + 2.0), (b * b - a * a) / (s * (s + 2.0)))
        off = 4.0 * k * (k + a) * (k + b) * (k + a + b) / (s * s * (s + 1.0) * (s - 1.0))
    if count > 1:
        off[1] = 4.0 * (1.0 + a) * (1.0 + b) / ((2.0 + a + b) ** 2 * (3.0 + a + b))
    off[0] = 0.0
    return diag, off


def _orthonormal_values(a, b, degree, t):
    """q_0..q_degree, orthonormal for (1-t)^a (1+t)^b up to one common factor, at points t:
    array (degree + 1, len(t)). The common factor cancels in f(1)/f_0."""
    diag, off = _jacobi_recurrence(a, b, degree + 1)
    t = np.asarray(t, dtype=np.float64)
    q = np.zeros((degree + 1,) + t.shape)
    q[0] = 1.0
    if degree >= 1:
        q[1] = (t - diag[0]) / math.sqrt(off[1])
    for i in range(1, degree):
        q[i + 1] = ((t - diag[i]) * q[i] - math.sqrt(off[i]) * q[i - 1]) / math.sqrt(off[i + 1])
    return q


def _jacobi_matrix(a, b, size):
    """The symmetric tridiagonal matrix whose eigenvalues are the zeros of the degree-`size`
    polynomial orthogonal for (1-t)^a (1+t)^b (Golub-Welsch)."""
    diag, off = _jacobi_recurrence(a, b, size)
    return np.diag(diag) + np.diag(np.sqrt(off[1:]), 1) + np.diag(np.sqrt(off[1:]), -1)


@functools.lru_cache(maxsize=256)
def _gauss_nodes(a, b, count):
    """Gauss quadrature nodes and normalised weights (summing to 1) for (1-t)^a (1+t)^b."""
    nodes, vectors = np.linalg.eigh(_jacobi_matrix(a, b, count))
    weights = vectors[0] ** 2
    weights /= weights.sum()
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


def _largest_zero(a, b, degree):
    return float(np.linalg.eigvalsh(_jacobi_matrix(a, b, degree))[-1])


@functools.lru_cache(maxsize=None)
def _interval_end(dim, m):
    """Where Levenshtein's degree-(m+1) interval starts: t_0^{1,1} = -1 (m = 0), then
    t_1^{1,0} < t_1^{1,1} < t_2^{1,0} < t_2^{1,1} < ... for m = 1, 2, 3, 4, ..."""
    if m == 0:
        return -1.0
    alpha = (dim - 3) / 2.0
    k = (m + 1) // 2
    return _largest_zero(alpha + 1.0, alpha if m % 2 else alpha + 1.0, k)


def levenshtein_degree(dim, s):
    """The degree m of Levenshtein's polynomial for cosine s in dimension dim (>= 3): the m with
    end(m-1) <= s < end(m), capped at 2 * MAX_HALF_DEGREE."""
    m = 1
    while m < 2 * MAX_HALF_DEGREE and s >= _interval_end(dim, m):
        m += 1
    return m


def levenshtein_polynomial(dim, s, degree):
    """Levenshtein's extremal polynomial of the given degree at cosine s, as a callable on a 1-D
    float64 array of points t."""
    alpha = (dim - 3) / 2.0
    k = (degree + 1) // 2
    b = alpha if degree % 2 else alpha + 1.0
    q_s = _orthonormal_values(alpha + 1.0, b, k - 1, np.array([s], dtype=np.float64))[:, 0]

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        kernel = (_orthonormal_values(alpha + 1.0, b, k - 1, t) * q_s[:, None]).sum(0)
        value = (t - s) * kernel ** 2
        return value if degree % 2 else value * (t + 1.0)

    return f


def gegenbauer_coefficients(dim, f, degree):
    """Coefficients f_0..f_degree of f in the polynomials orthogonal for (1-t^2)^((dim-3)/2),
    each scaled to be 1 at t = 1. Delsarte's bound needs f_i >= 0 for i >= 1 and f_0 > 0."""
    alpha = (dim - 3) / 2.0
    nodes, weights = _gauss_nodes(alpha, alpha, degree + 2)
    basis = _orthonormal_values(alpha, alpha, degree, nodes)
    at_one = _orthonormal_values(alpha, alpha, degree, np.array([1.0]))[:, 0]
    # f = sum_i c_i q_i with c_i = E[f q_i]; in the basis P_i = q_i / q_i(1) the coefficient is c_i q_i(1).
    return (basis * (weights * f(nodes))).sum(1) * at_one


def levenshtein_size_bound(dim, s):
    """L(dim, s): the most points a code on S^(dim-1) with largest cosine s can have (dim >= 3)."""
    degree = levenshtein_degree(dim, s)
    f = levenshtein_polynomial(dim, s, degree)
    alpha = (dim - 3) / 2.0
    nodes, weights = _gauss_nodes(alpha, alpha, degree + 2)
    mean = float((weights * f(nodes)).sum())
    return float(f(np.array([1.0]))[0]) / mean if mean > 0 else math.inf


def levenshtein_max_cos_bound(num_classes, dim, *, tol=1e-13):
    """The smallest largest-cosine that Levenshtein's bound allows for num_classes points in R^dim
    (dim >= 3): the s where L(dim, s) = num_classes. L increases with s, so the interval ends
    bracket the answer and bisection finishes inside one interval (low degree, no overflow)."""
    lo = -1.0
    for m in range(1, 2 * MAX_HALF_DEGREE + 1):
        hi = _interval_end(dim, m)
        if levenshtein_size_bound(dim, hi) >= num_classes:
            break
        lo = hi
    else:
        return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if levenshtein_size_bound(dim, mid) >= num_classes:
            hi = mid
        else:
            lo = mid
    return hi


def max_cos_lower_bound(num_classes, dim):
    """The best known lower bound on the largest pairwise cosine of any C unit vectors in R^d.

    C <= d+1: -1/(C-1) (regular simplex, tight); d+1 < C <= 2d: 0 (Rankin, tight); C > 2d:
    Levenshtein's bound (d >= 3), cos(2 pi / C) on the circle (d = 2, tight), 1 on the line (d = 1).
    """
    if num_classes <= 1:
        return -1.0
    if num_classes <= dim + 1:
        return -1.0 / (num_classes - 1)
    if num_classes <= 2 * dim:
        return 0.0
    if dim == 1:
        return 1.0
    if dim == 2:
        return math.cos(2.0 * math.pi / num_classes)
    return levenshtein_max_cos_bound(num_classes, dim)
