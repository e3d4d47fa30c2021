"""Centroids from a binary code: up to 4^m unit vectors in R^(2^m - 1) whose cosines take three values.

The code is the dual of the double-error-correcting BCH code of length n = 2^m - 1, m odd (the
linear span of a Gold pair of m-sequences): codeword(a, b)_i = Tr(a alpha^i) + Tr(b alpha^(3i)) over
GF(2^m), i = 0..n-1, for all a, b in GF(2^m). Its nonzero weights are 2^(m-1) and 2^(m-1) +- 2^((m-1)/2)
(Gold 1968; Kasami 1969). Mapping bits to +-1/sqrt(n) turns the distance between two codewords, itself
the weight of a codeword, into a cosine 1 - 2w/n, so any subset has

    max cos = (2^((m+1)/2) - 1) / n            (m = 9, n = 511: 31/511 = 0.0607)

with no optimisation at all, for up to 4^m points (262,144 at m = 9). In R^d the code of the largest
odd m with 2^m - 1 <= d is embedded by a random (seeded) isometry.

Why it is here: at C = 100,000, d = 512 the repulsion optimiser needs hundreds of O(C^2 d) force
evaluations to approach this value (0.12 after 92 evaluations on an H200); the code gives 0.0607 in
0.66 s on a 2-core CPU. Given time, the optimiser does better at moderate C (0.0519 at C = 10,000,
converged after 408 s on that CPU, where the code also gives 0.0607).
"""
import functools
import math

import torch

# Primitive polynomials over GF(2) (bit k = coefficient of x^k, x^m included) for the odd m supported.
PRIMITIVE_POLYNOMIALS = {3: 0b1011, 5: 0b100101, 7: 0b10001001, 9: 0b1000010001, 11: 0b100000000101}


def code_order(dim):
    """The largest supported odd m (3..11) with 2^m - 1 <= dim, or None when dim < 7."""
    fitting = [m for m in PRIMITIVE_POLYNOMIALS if (1 << m) - 1 <= dim]
    return max(fitting) if fitting else None


def code_capacity(dim):
    """How many centroids the code holds in R^dim: 4^m (0 when dim < 7)."""
    m = code_order(dim)
    return 0 if m is None else 1 << (2 * m)


def code_max_cos(dim):
    """The largest cosine between two different centroids of the code in R^dim (nan when dim < 7)."""
    m = code_order(dim)
    if m is None:
        return math.nan
    return ((1 << ((m + 1) // 2)) - 1) / ((1 << m) - 1)


def field_powers(m):
    """alpha^i for i = 0..n-1 as m-bit integers (alpha a root of the primitive polynomial); all
    distinct and nonzero exactly when the polynomial is primitive."""
    poly, n = PRIMITIVE_POLYNOMIALS[m], (1 << m) - 1
    powers, value = [], 1
    for _ in range(n):
        powers.append(value)
        value <<= 1
        if value >> m:
            value ^= poly
    return powers


@functools.lru_cache(maxsize=None)
def generator_matrix(m):
    """(2m, n) int64 0/1: rows Tr(alpha^k alpha^i) and Tr(alpha^k alpha^(3i)), k < m, over i < n. The
    trace is GF(2)-linear, so message bits u give the codeword u G (mod 2) for a = sum_k u_k alpha^k,
    b = sum_k u_(m+k) alpha^k."""
    n = (1 << m) - 1
    powers = field_powers(m)
    log = {v: i for i, v in enumerate(powers)}

    def trace(x):
        # Tr(x) = x + x^2 + x^4 + ... + x^(2^(m-1)), which lies in GF(2) = {0, 1}
        if x == 0:
            return 0
        total, e = 0, log[x]
        for k in range(m):
            total ^= powers[(e << k) % n]
        return total

    rows = []
    for exponent in (1, 3):
        for k in range(m):
            rows.append([trace(powers[(k + exponent * i) % n]) for i in range(n)])
    return torch.tensor(rows, dtype=torch.int64)


# Rows per block when forming codewords: bounds the (rows x n) temporaries (bits, signs) to a few
# hundred MB even at n = 2047.
CODE_BLOCK_ROWS = 1 << 15


def gold_code_centroids(num_classes, dim, generator, dtype=torch.float64):
    """(C, dim) unit rows in `dtype` (float32 or float64): C distinct codewords (chosen at random with
    `generator`) as +-1/sqrt(n) vectors, embedded in R^dim by a random isometry. Needs dim >= 7 and
    C <= code_capacity(dim); max cos = code_max_cos(dim). Memory: the output plus O(block * n)."""
    from .centroids import random_orthonormal_columns  # the seeded Haar frame of the closed forms

    m = code_order(dim)
    if m is None:
        raise ValueError(f"method='code' needs dim >= 7, got dim={dim}")
    capacity = 1 << (2 * m)
    if num_classes > capacity:
        raise ValueError(f"method='code' holds at most {capacity} classes in dim={dim} (length {(1 << m) - 1}), "
                         f"got num_classes={num_classes}")
    n = (1 << m) - 1
    messages = torch.randperm(capacity, generator=generator)[:num_classes]
    frame = random_orthonormal_columns(dim, n, generator).t().to(dtype) / math.sqrt(n)
    # Float matmul of 0/1 values is exact here (sums of at most 2m = 22 ones) and runs on BLAS.
    code_rows = generator_matrix(m).to(torch.float32)
    out = torch.empty(num_classes, dim, dtype=dtype)
    for r0 in range(0, num_classes, CODE_BLOCK_ROWS):
        block = messages[r0:r0 + CODE_BLOCK_ROWS]
        bits = ((block[:, None] >> torch.arange(2 * m)) & 1).to(torch.float32)
        signs = 1.0 - 2.0 * torch.remainder(bits @ code_rows, 2.0)
        torch.mm(signs.to(dtype), frame, out=out[r0:r0 + CODE_BLOCK_ROWS])
    return out
