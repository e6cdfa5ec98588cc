"""The train/validation split: a seeded partition of the training patterns with the documented sizes."""

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from ptycho_torch.datamodule import split_indices
from tests.strategies import rng_seeds as seeds, pattern_counts, val_fractions


@given(pattern_counts, val_fractions, seeds)
@example(1, 0.5, 0)  # a single pattern stays in training
@example(2, 1e-9, 0)  # a tiny fraction still holds one out
@example(10, 0.25, 0)  # round half to even: 2.5 -> 2
def test_split_is_a_sorted_partition_of_all_patterns(count, val_fraction, seed):
    train, val = split_indices(count, val_fraction, seed)
    assert sorted(train + val) == list(range(count))
    assert train == sorted(train) and val == sorted(val)
    assert all(type(i) is int for i in train + val)


@given(pattern_counts, val_fractions, seeds)
def test_validation_size_is_the_rounded_share_at_least_one_and_never_all(count, val_fraction, seed):
    train, val = split_indices(count, val_fraction, seed)
    if val_fraction == 0:
        assert val == []
    elif count == 1:
        assert val == []  # "never all" wins over "at least one"
    else:
        assert 1 <= len(val) <= count - 1
        assert len(val) == max(1, round(count * val_fraction))  # val_fraction <= 0.5 never reaches count
    assert len(train) >= 1


@given(st.integers(1, 500), val_fractions, seeds)
def test_split_repeats_exactly_for_a_seed(count, val_fraction, seed):
    state = torch.random.get_rng_state()
    assert split_indices(count, val_fraction, seed) == split_indices(count, val_fraction, seed)
    assert torch.equal(torch.random.get_rng_state(), state)  # its own generator: global torch RNG untouched


@given(st.integers(100, 2000), st.floats(0.1, 0.5), seeds, seeds)
def test_different_seeds_hold_out_different_patterns(count, val_fraction, seed, other_seed):
    """At least 10 held out of 100: two seeds picking the same set has odds below 1e-13."""
    if seed == other_seed:
        other_seed = seed + 1
    assert split_indices(count, val_fraction, seed)[1] != split_indices(count, val_fraction, other_seed)[1]


def test_held_out_patterns_spread_over_the_whole_range():
    """A check against a split that takes the first or last patterns (a scan's corner, not a sample)."""
    _, val = split_indices(1000, 0.2, seed=0)
    assert np.mean(val) == pytest.approx(500, abs=50) and min(val) < 50 and max(val) > 950
