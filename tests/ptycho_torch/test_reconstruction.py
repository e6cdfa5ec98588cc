"""Stitching predicted patches into objects: the true patches give back exactly the scored region,
in any pattern order, and an object that encodes its own coordinates catches a wrong merge."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptycho_torch.config import SimulationConfig
from ptycho_torch.objects import as_complex
from ptycho_torch.probe import ideal_probe
from ptycho_torch.reconstruction import stitch_objects
from ptycho_torch.simulation import simulate_split
from tests.strategies import rng_seeds as seeds


SIM = SimulationConfig(N=16, object_size=40, n_lines=20, n_train_images=1, n_test_images=2,
                       train_stride=4, test_stride=8, set_phi=True, data_seed=3)
STRIDE = 8  # pixels between scan positions: a 4 x 4 raster per object, 32 patterns in all


@pytest.fixture(scope="module")
def test_split():
    """A tiny simulated test split (2 objects of 40 x 40, N = 16, stride 8)."""
    return simulate_split(SIM, 2, STRIDE, np.random.default_rng(0), ideal_probe(SIM.N), split="test")


def shuffled(data, order: np.ndarray):
    """The same split with its patterns in another order (every per-pattern array permuted alike)."""
    return dataclasses.replace(data, diffraction=data.diffraction[order], Y_I=data.Y_I[order],
                               Y_phi=data.Y_phi[order], coords=data.coords[order], image_index=data.image_index[order])


def encoded_objects(count: int, size: int) -> np.ndarray:
    """(I, S, S) complex64 objects whose pixel (i, row, col) holds 1000 i + row + 1j col (exact in float32)."""
    i, rows, cols = np.indices((count, size, size))
    return (1000.0 * i + rows + 1j * cols).astype(np.complex64)


def patches_by_loop(objects: np.ndarray, data) -> np.ndarray:
    """Each pattern's N x N window cut by hand from its object, (M, N, N)."""
    return np.stack([objects[i, r:r + data.N, c:c + data.N] for i, (r, c) in zip(data.image_index, data.coords)])


def expected_region(count: int, size: int, N: int, stride: int) -> np.ndarray:
    """The stitched region's values straight from the encoding: rows and cols from c = (N - s) // 2
    to c + n s - 1, n = (S - N) // s + 1 scan positions per axis."""
    start, n = (N - stride) // 2, (size - N) // stride + 1
    i, rows, cols = np.indices((count, n * stride, n * stride))
    return (1000.0 * i + (rows + start) + 1j * (cols + start)).astype(np.complex64)


def test_true_patches_stitch_back_to_the_ground_truth_bitwise(test_split):
    patches = as_complex(test_split.Y_I, test_split.Y_phi)  # (M, N, N) complex64, the simulator's own recipe
    stitched = stitch_objects(patches, test_split)
    assert stitched.dtype == np.complex64 and stitched.shape == test_split.YY_ground_truth.shape
    assert np.array_equal(stitched, test_split.YY_ground_truth)


def test_patches_cut_from_the_objects_stitch_back_to_the_ground_truth_bitwise(test_split):
    stitched = stitch_objects(patches_by_loop(test_split.objectGuess, test_split), test_split)
    assert np.array_equal(stitched, test_split.YY_ground_truth)


def test_amplitude_times_phase_factor_patches_stitch_back_to_the_ground_truth_to_rounding(test_split):
    """Y_I * exp(1j Y_phi) in complex64 arithmetic rounds differently from the simulator's float64
    product (one ulp), so this route is equal to rounding, not bitwise."""
    patches = test_split.Y_I * np.exp(1j * test_split.Y_phi)  # (M, N, N) complex64
    np.testing.assert_allclose(stitch_objects(patches, test_split), test_split.YY_ground_truth, rtol=0, atol=1e-6)


@settings(deadline=None)
@given(seeds)
def test_stitching_ignores_the_order_of_the_patterns(test_split, seed):
    order = np.random.default_rng(seed).permutation(len(test_split.coords))
    patches = as_complex(test_split.Y_I, test_split.Y_phi)
    assert np.array_equal(stitch_objects(patches[order], shuffled(test_split, order)), test_split.YY_ground_truth)


@settings(deadline=None)
@given(seeds)
def test_each_stitched_pixel_comes_from_its_own_object_row_and_column(test_split, seed):
    order = np.random.default_rng(seed).permutation(len(test_split.coords))
    data = shuffled(test_split, order)
    objects = encoded_objects(2, SIM.object_size)
    stitched = stitch_objects(patches_by_loop(objects, data), data)
    assert np.array_equal(stitched, expected_region(2, SIM.object_size, SIM.N, STRIDE))


WRONG_MERGES = {
    "transposed_patches": lambda patches, data: (patches.swapaxes(1, 2), data),
    "patches_in_reverse_order": lambda patches, data: (patches[::-1], data),
    "objects_swapped": lambda patches, data: (patches, dataclasses.replace(data, image_index=1 - data.image_index)),
    "positions_transposed": lambda patches, data: (patches, dataclasses.replace(data, coords=data.coords[:, ::-1])),
}


@pytest.mark.parametrize("wrong", WRONG_MERGES.values(), ids=list(WRONG_MERGES))
def test_the_coordinate_oracle_catches_a_wrong_merge(test_split, wrong):
    """The check of the check above: each plausible stitching mistake changes the result."""
    patches, data = wrong(patches_by_loop(encoded_objects(2, SIM.object_size), test_split), test_split)
    assert not np.array_equal(stitch_objects(patches, data), expected_region(2, SIM.object_size, SIM.N, STRIDE))


def test_a_real_amplitude_map_stitches_with_its_own_dtype(test_split):
    stitched = stitch_objects(test_split.Y_I, test_split)
    assert stitched.dtype == np.float32
    np.testing.assert_allclose(stitched, np.abs(test_split.YY_ground_truth), rtol=0, atol=1e-6)
