"""method='code': the dual-BCH (Gold) construction, checked through the code's weights (every cosine
between two codewords is 1 - 2w/n for the weight w of a nonzero codeword) and on generated sets
against float64 cosines."""
import math

import pytest
import torch

import pedcc_kernels as pk
from pedcc_kernels import binary_codes as bc


def nonzero_weights(m, messages):
    bits = (messages[:, None] >> torch.arange(2 * m)) & 1
    return ((bits @ bc.generator_matrix(m)) % 2).sum(dim=1)


@pytest.mark.parametrize("m", sorted(bc.PRIMITIVE_POLYNOMIALS))
def test_polynomials_are_primitive(m):
    powers = bc.field_powers(m)
    assert len(set(powers)) == (1 << m) - 1 and 0 not in powers


@pytest.mark.parametrize("m", [3, 5, 7, 9, 11])
def test_code_has_gold_weights(m):
    """Three nonzero weights, 2^(m-1) and 2^(m-1) +- 2^((m-1)/2): all codewords up to m = 7, a random
    sample of them beyond."""
    capacity = 1 << (2 * m)
    if m <= 7:
        messages = torch.arange(1, capacity)
    else:
        messages = torch.randint(1, capacity, (4000,), generator=torch.Generator().manual_seed(m))
    weights = set(nonzero_weights(m, messages).tolist())
    half, spread = 1 << (m - 1), 1 << ((m - 1) // 2)
    assert weights <= {half - spread, half, half + spread}
    if m <= 7:
        assert weights == {half - spread, half, half + spread}
    n = (1 << m) - 1
    assert bc.code_max_cos(n) == pytest.approx(1 - 2 * (half - spread) / n, abs=1e-15)


@pytest.mark.parametrize("c,d", [(2, 7), (64, 7), (500, 31), (1000, 40), (4096, 127)])
def test_generated_code_centroids_reach_the_promised_max_cos(c, d):
    w = pk.generate_centroids(c, d, method="code", seed=3, dtype=torch.float64)
    assert w.shape == (c, d)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(c, dtype=torch.float64), rtol=0, atol=1e-12)
    cos = w @ w.t()
    cos.fill_diagonal_(-math.inf)
    assert cos.max().item() <= bc.code_max_cos(d) + 1e-12
    if c >= 500:  # enough pairs that the largest value occurs
        assert cos.max().item() == pytest.approx(bc.code_max_cos(d), abs=1e-12)
    stats = pk.centroid_stats(w)
    assert stats["bound"] - 1e-12 <= stats["max_cos"] <= bc.code_max_cos(d) + 1e-12


def test_code_is_seeded_and_embedded_at_random():
    a = pk.generate_centroids(100, 40, method="code", seed=1)
    b = pk.generate_centroids(100, 40, method="code", seed=1)
    c = pk.generate_centroids(100, 40, method="code", seed=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max().item() > 0.1
    assert (a[:, 31:].abs().sum().item() > 1.0)  # not just zero-padded: a random isometry into R^40


def test_code_parameters_per_dimension():
    assert bc.code_order(6) is None and bc.code_capacity(6) == 0 and math.isnan(bc.code_max_cos(6))
    assert (bc.code_order(7), bc.code_capacity(7)) == (3, 64)
    assert (bc.code_order(512), bc.code_capacity(512)) == (9, 262144)
    assert bc.code_max_cos(512) == pytest.approx(31 / 511)
    assert bc.code_order(100000) == 11


@pytest.mark.parametrize("kwargs", [dict(num_classes=65, dim=7), dict(num_classes=5, dim=6)])
def test_code_refuses_what_it_cannot_hold(kwargs):
    with pytest.raises(ValueError, match="method='code'"):
        pk.generate_centroids(method="code", **kwargs)
