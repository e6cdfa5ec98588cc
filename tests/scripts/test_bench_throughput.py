"""The throughput benchmark's FLOP count: real arithmetic, whatever dtype the products run in."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_throughput import step_flops


@pytest.mark.parametrize("product", [
    lambda a, b: a @ b,
    lambda a, b: torch.bmm(a.unsqueeze(0), b.unsqueeze(0)),
    lambda a, b: torch.addmm(torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype), a, b),
    lambda a, b: torch.baddbmm(torch.zeros(1, a.shape[0], b.shape[1], dtype=a.dtype), a.unsqueeze(0), b.unsqueeze(0)),
])
def test_a_complex_product_counts_four_times_the_real_one_of_its_shape(product):
    m, k, n = 3, 5, 7
    counts = {dtype: step_flops(lambda: product(torch.ones(m, k, dtype=dtype), torch.ones(k, n, dtype=dtype)))
              for dtype in (torch.float32, torch.complex64)}
    assert counts[torch.float32] == 2 * m * k * n
    assert counts[torch.complex64] == 8 * m * k * n


def test_ffts_are_counted_at_5_n_log2_n_per_complex_transform_and_half_for_real_ones():
    assert step_flops(lambda: torch.fft.fft(torch.ones(4, 16, dtype=torch.complex64))) == 4 * 5 * 16 * 4
    assert step_flops(lambda: torch.fft.rfft(torch.ones(4, 16))) == int(4 * 2.5 * 16 * math.log2(16))
