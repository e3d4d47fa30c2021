"""pedcc_kernels._memory: the peak-RSS probe that the demo reports (and whose readings the benchmark
harness and the examples share) counts the work, not the setup before it."""
import sys

import pytest
import torch

from pedcc_kernels._memory import peak_rss_bytes, peak_rss_increase

MIB = 1 << 20
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or peak_rss_bytes() is None,
                                reason="peak RSS is read from Linux's /proc/self/status")


def _size_only(n):
    return (n,)


def _setup_with_a_temporary(n):
    torch.ones(2 * n, dtype=torch.uint8)  # freed before the work starts: must not hide its peak
    return (n,)


def _allocate(n):
    torch.ones(n, dtype=torch.uint8)


def test_peak_rss_increase_measures_the_work():
    assert 180 * MIB <= peak_rss_increase(_size_only, _allocate, 200 * MIB) <= 260 * MIB


def test_a_setup_peak_does_not_hide_the_work():
    assert 90 * MIB <= peak_rss_increase(_setup_with_a_temporary, _allocate, 100 * MIB) <= 160 * MIB
