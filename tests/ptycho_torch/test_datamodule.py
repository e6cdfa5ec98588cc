"""The train/validation split: a seeded partition of the training patterns with the documented sizes;
the data order: a permutation per (seed, epoch), whatever epochs were drawn before."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.datamodule import EpochShard, EpochShuffle, GridLinesDataModule, split_indices
from ptycho_torch.generators import tiny_model_config
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


def epoch_order(sampler: EpochShuffle, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


@given(st.integers(2, 200), seeds, st.integers(0, 50))
def test_an_epochs_order_is_a_permutation_that_depends_on_seed_and_epoch_only(count, seed, epoch):
    walked = EpochShuffle(range(count), seed)
    for earlier in range(min(epoch, 3)):  # epochs drawn before (the uninterrupted run) change nothing
        epoch_order(walked, earlier)
    order = epoch_order(walked, epoch)
    assert sorted(order) == list(range(count))
    assert order == epoch_order(EpochShuffle(range(count), seed), epoch)  # a resumed run's fresh sampler
    assert order == epoch_order(walked, epoch)  # and drawing it again


@given(seeds)
def test_epochs_and_seeds_shuffle_differently(seed):
    sampler = EpochShuffle(range(64), seed)
    orders = {tuple(epoch_order(sampler, epoch)) for epoch in range(4)}
    assert len(orders) == 4
    assert epoch_order(EpochShuffle(range(64), seed + 1), 0) != epoch_order(sampler, 0)


@given(st.integers(1, 60), seeds, st.integers(0, 20), st.integers(2, 4))
def test_under_ddp_the_ranks_share_the_seeds_epoch_order(count, seed, epoch, ranks):
    """Each rank takes every ranks-th index of the same (seed, epoch) permutation, padded from its
    start as torch's DistributedSampler pads, so the ranks together see every index each epoch."""
    shards = [epoch_order(EpochShard(range(count), seed, ranks, rank), epoch) for rank in range(ranks)]
    assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == -(-count // ranks)
    order = epoch_order(EpochShuffle(range(count), seed), epoch)
    assert [i for position in range(len(shards[0])) for i in (shard[position] for shard in shards)][:count] == order


@given(seeds)
def test_under_ddp_the_training_seed_sets_the_order(seed):
    """Lightning's own DistributedSampler would draw every seed's order from PL_GLOBAL_SEED."""
    assert epoch_order(EpochShard(range(64), seed, 2, 0), 0) != epoch_order(EpochShard(range(64), seed + 1, 2, 0), 0)


def test_the_train_loader_follows_the_seeds_order_alone_or_a_ranks_share_of_it_under_ddp(tiny_data):
    """25 patterns, 5 validating: 20 train. Under 2 ranks rank 1 takes positions 1, 3, ..., 19 of the epoch's order."""
    training = TrainingConfig(model=tiny_model_config("cnn"), seed=5, val_fraction=0.2, batch_size=4)
    data = GridLinesDataModule(tiny_data[0], training, PyTorchExecutionConfig())
    assert (len(data.train_set), len(data.val_set)) == (20, 5)
    order = epoch_order(EpochShuffle(range(20), seed=5), 3)
    single = data._train_sampler()
    single.set_epoch(3)
    assert list(single) == order
    data.trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert type(data._train_sampler()) is EpochShuffle  # one process: no DistributedSampler for Lightning to see
    data.trainer = SimpleNamespace(world_size=2, global_rank=1)
    shard = data._train_sampler()
    shard.set_epoch(3)
    assert list(shard) == order[1::2]


def test_at_gridsize_two_an_item_is_a_group_of_four_patterns_with_their_canvas_offsets(tiny_data):
    training = TrainingConfig(model=tiny_model_config("cnn", gridsize=2), val_fraction=0.2)
    item = GridLinesDataModule(tiny_data[0], training, PyTorchExecutionConfig()).train_set[0]
    assert item["diffraction"].shape == item["amplitude"].shape == item["phase"].shape == (4, 16, 16)
    assert item["offsets"].shape == (4, 2) and item["offsets"].dtype == torch.int64
