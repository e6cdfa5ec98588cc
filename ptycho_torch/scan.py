"""Raster scan geometry: where patches are cut from an object and how they tile back.

A square object of side S is scanned by an N x N window whose top-left corner steps by the
stride s along rows and columns: offsets 0, s, 2s, ..., k s with k = floor((S - N) / s), so
n = k + 1 offsets per axis and M = n^2 patches (row-major order).

Stitching keeps the central s x s crop of each patch, starting c = (N - s) // 2 pixels inside
it. The crops of neighbouring patches abut exactly, so together they tile the object region

    rows, cols  [c, c + n s)        (``stitched_region``)

which is the ground truth a stitched reconstruction is scored against. Since s <= N, the
region ends at (n - 1) s + c + s <= S - N + (N + s) // 2 <= S: it always lies inside the object.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def scan_offsets(object_size: int, N: int, stride: int) -> np.ndarray:
    """Top-left offsets along one axis: 0, s, 2s, ... <= S - N, int64."""
    if not (1 <= N <= object_size and stride >= 1):
        raise ValueError(f"need 1 <= N <= object_size and stride >= 1, "
                         f"got N={N}, object_size={object_size}, stride={stride}")
    return np.arange(0, object_size - N + 1, stride, dtype=np.int64)


def raster_positions(object_size: int, N: int, stride: int) -> np.ndarray:
    """Top-left (row, col) of every patch of the raster scan, row-major, (M, 2) int64."""
    offsets = scan_offsets(object_size, N, stride)
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")  # (n, n) each
    return np.stack([rows.ravel(), cols.ravel()], axis=1)  # (M, 2)


def extract_patches(obj: np.ndarray, positions: np.ndarray, N: int,
                    image_index: np.ndarray | None = None) -> np.ndarray:
    """The N x N patches at the given top-left (row, col) positions, (M, N, N), a copy.

    obj is one (S, S) array, or a stack (I, S, S) with ``image_index`` (M,) naming each patch's object.
    """
    windows = sliding_window_view(obj, (N, N), axis=(-2, -1))  # (..., S - N + 1, S - N + 1, N, N), a view
    rows, cols = positions[:, 0], positions[:, 1]
    return windows[rows, cols] if image_index is None else windows[image_index, rows, cols]  # (M, N, N)


def crop_offset(N: int, stride: int) -> int:
    """Where the central stride x stride crop starts inside a patch."""
    return (N - stride) // 2


def stitched_region(object_size: int, N: int, stride: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1): the object slice that stitching the raster scan covers."""
    start = crop_offset(N, stride)
    stop = start + len(scan_offsets(object_size, N, stride)) * stride
    return start, stop, start, stop


def _grid_order(positions: np.ndarray, stride: int) -> tuple[np.ndarray, int, int]:
    """The row-major order of positions that form a complete grid of step ``stride``, and its shape."""
    rows, cols = np.unique(positions[:, 0]), np.unique(positions[:, 1])
    order = np.lexsort((positions[:, 1], positions[:, 0]))
    expected = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)  # (nr * nc, 2)
    steps_ok = all(np.all(np.diff(axis) == stride) for axis in (rows, cols))
    if not steps_ok or len(positions) != len(expected) or not np.array_equal(positions[order], expected):
        raise ValueError(f"positions are not a complete raster grid with stride {stride}")
    return order, len(rows), len(cols)


def stitch_patches(patches: Any, positions: np.ndarray, N: int, stride: int) -> Any:
    """Tile the central stride x stride crop of each patch into the region the scan covers.

    patches: (M, N, N) numpy array (any dtype, complex included) or torch tensor; positions:
    (M, 2) top-left corners forming a complete raster grid of step ``stride``, in any order.
    Returns (n_rows * stride, n_cols * stride) of the same kind and dtype as ``patches``.
    """
    positions = np.asarray(positions)
    order, n_rows, n_cols = _grid_order(positions, stride)
    c = crop_offset(N, stride)
    crops = patches[:, c:c + stride, c:c + stride][order]  # (M, s, s), row-major; copies the crops only
    tiles = crops.reshape(n_rows, n_cols, stride, stride).swapaxes(1, 2)  # (n_rows, s, n_cols, s)
    return tiles.reshape(n_rows * stride, n_cols * stride)  # (H, W)
