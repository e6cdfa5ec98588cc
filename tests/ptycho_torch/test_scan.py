"""Raster scan: positions, vectorised patch extraction, and stitching as its exact inverse on the covered region."""

import numpy as np
import pytest
import torch
from hypothesis import example, given

from ptycho_torch.scan import extract_patches, raster_positions, stitch_patches, stitched_region
from tests.strategies import rng_seeds, scan_geometries


def random_object(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))).astype(np.complex64)


@given(scan_geometries())
@example((392, 64, 4))  # upstream train split: 6,889 patches
@example((392, 64, 10))  # upstream test split: 1,089 patches
def test_raster_positions_cover_the_object_row_major(geometry):
    size, side, stride = geometry
    positions = raster_positions(size, side, stride)
    per_axis = (size - side) // stride + 1
    assert positions.shape == (per_axis**2, 2) and positions.dtype == np.int64
    assert positions.min() == 0 and positions.max() == (per_axis - 1) * stride <= size - side
    assert np.array_equal(positions, positions[np.lexsort((positions[:, 1], positions[:, 0]))])


@given(scan_geometries(max_size=40), rng_seeds)
def test_extract_patches_matches_a_loop(geometry, seed):
    size, side, stride = geometry
    obj = random_object(size, seed)
    positions = raster_positions(size, side, stride)
    patches = extract_patches(obj, positions, side)
    want = np.stack([obj[r:r + side, c:c + side] for r, c in positions])
    assert patches.dtype == obj.dtype and np.array_equal(patches, want)


@given(scan_geometries(max_size=40), rng_seeds)
def test_extract_patches_from_a_stack_follows_image_index(geometry, seed):
    size, side, stride = geometry
    stack = np.stack([random_object(size, seed), random_object(size, seed + 1)])
    positions = np.tile(raster_positions(size, side, stride), (2, 1))
    index = np.repeat([0, 1], len(positions) // 2)
    want = np.stack([stack[i, r:r + side, c:c + side] for i, (r, c) in zip(index, positions)])
    assert np.array_equal(extract_patches(stack, positions, side, index), want)


@given(scan_geometries(), rng_seeds)
@example((17, 5, 2), 0)  # odd side, even stride
@example((18, 6, 3), 0)  # even side, odd stride
def test_stitching_central_crops_of_true_patches_reproduces_the_stitched_region(geometry, seed):
    size, side, stride = geometry
    obj = random_object(size, seed)
    positions = raster_positions(size, side, stride)
    row0, row1, col0, col1 = stitched_region(size, side, stride)
    assert 0 <= row0 < row1 <= size and 0 <= col0 < col1 <= size
    shuffled = np.random.default_rng(seed).permutation(len(positions))  # any order stitches the same
    stitched = stitch_patches(extract_patches(obj, positions, side)[shuffled], positions[shuffled], side, stride)
    assert stitched.dtype == obj.dtype
    assert np.array_equal(stitched, obj[row0:row1, col0:col1])


def test_stitching_the_upstream_test_geometry_reproduces_its_region():
    size, side, stride = 392, 64, 10
    obj = random_object(size, 0).real.copy()  # (392, 392) float32
    positions = raster_positions(size, side, stride)
    row0, row1, col0, col1 = stitched_region(size, side, stride)
    assert (row0, row1) == (27, 357)  # 33 patches of 10 px from (64 - 10) // 2
    assert np.array_equal(stitch_patches(extract_patches(obj, positions, side), positions, side, stride),
                          obj[row0:row1, col0:col1])


@given(scan_geometries(max_size=40), rng_seeds)
def test_stitching_works_on_torch_tensors_too(geometry, seed):
    size, side, stride = geometry
    obj = random_object(size, seed)
    positions = raster_positions(size, side, stride)
    patches = torch.from_numpy(extract_patches(obj, positions, side))
    row0, row1, col0, col1 = stitched_region(size, side, stride)
    stitched = stitch_patches(patches, positions, side, stride)
    assert isinstance(stitched, torch.Tensor) and np.array_equal(stitched.numpy(), obj[row0:row1, col0:col1])


def test_stitching_an_incomplete_grid_is_refused():
    positions = raster_positions(20, 8, 4)
    patches = extract_patches(random_object(20, 0), positions, 8)
    with pytest.raises(ValueError, match="complete raster grid"):
        stitch_patches(patches[1:], positions[1:], 8, 4)
    with pytest.raises(ValueError, match="stride 3"):
        stitch_patches(patches, positions, 8, 3)


def test_scan_rejects_a_patch_larger_than_the_object():
    with pytest.raises(ValueError, match="N <= object_size"):
        raster_positions(8, 16, 4)


@pytest.mark.parametrize("size, side, stride", [(8, 0, 4), (8, 4, 0), (8, 9, 1), (0, 0, 1)],
                         ids=["empty-patch", "zero-stride", "patch-past-object", "empty-object"])
def test_scan_rejects_a_geometry_without_a_patch_or_a_step(size, side, stride):
    with pytest.raises(ValueError, match=f"N={side}, object_size={size}, stride={stride}"):
        raster_positions(size, side, stride)


@pytest.mark.parametrize("size, side, stride, offsets", [(1, 1, 1, [0]), (8, 8, 3, [0]), (9, 4, 5, [0, 5]),
                                                          (10, 4, 3, [0, 3, 6])],
                         ids=["one-pixel", "patch-fills-object", "last-offset-at-the-edge", "stride-3"])
def test_scan_accepts_the_smallest_geometries(size, side, stride, offsets):
    positions = raster_positions(size, side, stride)
    assert positions.tolist() == [[row, col] for row in offsets for col in offsets]


def test_a_non_square_complete_raster_stitches_to_its_own_rows_and_columns():
    """3 rows by 5 columns of positions: (3 s, 5 s), the object's region from the crop offset on."""
    side, stride = 8, 4
    obj = random_object(28, 1)[:20]  # (20, 28)
    rows, cols = np.meshgrid(stride * np.arange(3), stride * np.arange(5), indexing="ij")
    positions = np.stack([rows.ravel(), cols.ravel()], axis=1)  # (15, 2)
    shuffled = np.random.default_rng(1).permutation(len(positions))
    stitched = stitch_patches(extract_patches(obj, positions, side)[shuffled], positions[shuffled], side, stride)
    c = (side - stride) // 2
    assert stitched.shape == (3 * stride, 5 * stride)
    assert np.array_equal(stitched, obj[c:c + 3 * stride, c:c + 5 * stride])
    assert np.array_equal(stitch_patches(extract_patches(obj.T, positions[:, ::-1], side), positions[:, ::-1], side,
                                         stride), stitched.T)  # 5 rows by 3 columns: the transpose
