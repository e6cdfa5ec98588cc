"""The overlap constraint (PtychoPINN, gridsize 2): neighbouring patterns share one object canvas.

Groups. At gridsize g, C = g^2 patterns of one object form a group. On a complete raster scan
(every test file, every simulation) the groups are all g x g blocks of positions k raster steps
apart, (n_rows - k (g - 1)) (n_cols - k (g - 1)) per object, so an interior pattern sits in up to C
groups. k = 1 on the test split; on the train split k makes the members as far apart as the test
split's (train stride 4, test stride 8: k = 2), so the network learns the geometry it is tested on. Any
other scan groups each pattern with its C - 1 nearest neighbours of the same object (one group
per pattern). Members are listed row-major (by row, then column).

Canvas. A group's canvas starts at the smallest row and column of its members' top-left corners;
member k sits at ``offsets[k] = coords[k] - origin`` (row, col), the same coordinates the
simulator cut the patches with. Its side is N + the largest offset (N + stride on a raster).

Merge. Overlap-weighted mean of the member patches, each weighted by w (N, N) >= 0, the probe
intensity (light carries the information):

    canvas(x) = sum_k w(x - o_k) O_k(x - o_k) / sum_k w(x - o_k)   where the denominator > WEIGHT_FLOOR

Numerator and denominator are built from the same weights on the same support, so every canvas
value is a convex combination of patch values (never larger than the largest input magnitude);
pixels the weights do not reach stay 0. Re-extracting the members' windows from the canvas gives
patches that agree wherever they overlap. Batched: one scatter-add and one gather, no Python loop
over groups or patches.
"""

from __future__ import annotations

import numpy as np
import torch

WEIGHT_FLOOR = 1e-6  # relative to the largest weight: below it a canvas pixel counts as uncovered


# --- groups (numpy, at load time) ------------------------------------------------------------------

def group_members(coords: np.ndarray, image_index: np.ndarray, gridsize: int,
                  spacing: int | None = None) -> np.ndarray:
    """(G, C) int64 indices into the patterns: the groups described in the module docstring.

    ``spacing`` (pixels) sets how far apart a raster group's members are: the nearest multiple of
    the raster step (at least one step). The network learns how neighbours at that distance relate,
    so training groups must have the spacing the test groups have (the test raster's step); None =
    adjacent positions.
    """
    if gridsize == 1:
        return np.arange(len(coords), dtype=np.int64)[:, None]  # (M, 1)
    groups = []
    for image in np.unique(image_index):
        members = np.flatnonzero(image_index == image)
        groups.append(_raster_blocks(coords, members, gridsize, spacing) if _is_raster(coords[members])
                      else _nearest_groups(coords, members, gridsize ** 2))
    return np.concatenate(groups).astype(np.int64)  # (G, C)


def _is_raster(points: np.ndarray) -> bool:
    """A complete grid with one step per axis and at least two positions along each."""
    rows, cols = np.unique(points[:, 0]), np.unique(points[:, 1])
    steps = [np.unique(np.diff(axis)) for axis in (rows, cols)]
    return (len(rows) >= 2 and len(cols) >= 2 and all(len(step) == 1 for step in steps)
            and len(points) == len(rows) * len(cols) and len(np.unique(points, axis=0)) == len(points))


def _raster_blocks(coords: np.ndarray, members: np.ndarray, g: int, spacing: int | None) -> np.ndarray:
    points = coords[members]
    rows, cols = np.unique(points[:, 0]), np.unique(points[:, 1])
    grid = np.empty((len(rows), len(cols)), dtype=np.int64)  # pattern index at (row i, col j)
    grid[np.searchsorted(rows, points[:, 0]), np.searchsorted(cols, points[:, 1])] = members
    step = int(rows[1] - rows[0])
    k = 1 if spacing is None else max(1, min(round(spacing / step), (min(grid.shape) - 1) // (g - 1)))
    span = (g - 1) * k + 1  # grid positions a block spans per axis
    windows = np.lib.stride_tricks.sliding_window_view(grid, (span, span))[..., ::k, ::k]  # (.., .., g, g)
    return windows.reshape(-1, g * g)  # (G, C), row-major inside each block


def _nearest_groups(coords: np.ndarray, members: np.ndarray, C: int) -> np.ndarray:
    if len(members) < C:
        raise ValueError(f"an object has {len(members)} scan positions; groups of {C} need at least {C}")
    from scipy.spatial import cKDTree

    points = coords[members].astype(np.float64)
    _, nearest = cKDTree(points).query(points, k=C)  # (m, C), itself first; no (m, m) distance matrix
    groups = members[nearest]
    order = np.lexsort((coords[groups][..., 1], coords[groups][..., 0]), axis=-1)  # row-major per group
    return np.take_along_axis(groups, order, axis=1)


def group_offsets(coords: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(G, C, 2) int64: each member's top-left corner relative to its group's canvas origin."""
    corners = coords[groups]  # (G, C, 2)
    return corners - corners.min(axis=1, keepdims=True)


# --- merge and re-extract (torch, batched, differentiable) -------------------------------------------

def canvas_side(offsets: torch.Tensor, N: int) -> int:
    return N + int(offsets.max()) if offsets.numel() else N


def _flat_indices(offsets: torch.Tensor, N: int, side: int) -> torch.Tensor:
    """(B, C*N*N) positions on a flattened (side, side) canvas of every pixel of every member patch."""
    ramp = torch.arange(N, device=offsets.device)
    rows = offsets[..., 0, None, None] + ramp[:, None]  # (B, C, N, 1)
    cols = offsets[..., 1, None, None] + ramp[None, :]  # (B, C, 1, N)
    return (rows * side + cols).flatten(1)  # (B, C*N*N)


def merge_patches(patches: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor,
                  side: int | None = None) -> torch.Tensor:
    """Overlap-weighted mean of the group's patches on its canvas.

    patches (B, C, N, N) complex, offsets (B, C, 2) int64 (row, col), weights (N, N) real >= 0.
    Returns (B, side, side) complex; uncovered pixels are 0.
    """
    return merge_with_weight(patches, offsets, weights, side)[0]


def merge_with_weight(patches: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor,
                      side: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(canvas (B, side, side) complex, its weight (B, side, side) real: 0 where uncovered)."""
    B, C, N, _ = patches.shape
    side = canvas_side(offsets, N) if side is None else side
    index = _flat_indices(offsets, N, side)  # (B, C*N*N)
    w = weights.to(patches.real.dtype).expand(B, C, N, N)  # (B, C, N, N)
    weighted = torch.view_as_real(patches * w).flatten(1, 3)  # (B, C*N*N, 2): re, im
    numerator = weighted.new_zeros(B, side * side, 2).scatter_add_(1, index[..., None].expand(-1, -1, 2), weighted)
    denominator = w.new_zeros(B, side * side).scatter_add_(1, index, w.flatten(1))  # (B, side*side)
    covered = denominator > WEIGHT_FLOOR * weights.max()
    safe = torch.where(covered, denominator, torch.ones_like(denominator))  # one support for both
    mean = torch.view_as_complex(numerator / safe[..., None]) * covered  # (B, side*side) complex
    return mean.reshape(B, side, side), (denominator * covered).reshape(B, side, side)


def extract_from_canvas(canvas: torch.Tensor, offsets: torch.Tensor, N: int) -> torch.Tensor:
    """The members' N x N windows of the canvas: (B, side, side), (B, C, 2) -> (B, C, N, N)."""
    B, side, _ = canvas.shape
    C = offsets.shape[1]
    index = _flat_indices(offsets, N, side)  # (B, C*N*N)
    return canvas.reshape(B, side * side).gather(1, index).reshape(B, C, N, N)


def overlap_weights(probe: torch.Tensor) -> torch.Tensor:
    """The merge weights: the probe intensity |P|^2 (N, N), real."""
    return probe.abs().square()


def unlit_fraction(weights: np.ndarray, coords: np.ndarray, image_index: np.ndarray,
                   region: tuple[int, int, int, int]) -> float:
    """Of the objects' ``region`` (row0, row1, col0, col1), the share of pixels that no scan position's
    weight (N, N), the probe's intensity, reaches by WEIGHT_FLOOR of its peak: pixels no pattern
    measures. A gridsize-2 merge leaves them 0 (its canvas has no weight there); a gridsize-1 network
    answers there with a guess. Either way the scores count them."""
    weights = np.asarray(weights, dtype=np.float64)
    N = weights.shape[-1]
    lit = weights > WEIGHT_FLOOR * weights.max()  # as the merge's coverage, one position at a time
    row0, row1, col0, col1 = region
    rows, cols = max(row1, int(coords[:, 0].max()) + N), max(col1, int(coords[:, 1].max()) + N)
    unlit = 0
    images = np.unique(image_index)
    for image in images:
        canvas = np.zeros((rows, cols), dtype=bool)
        for row, col in coords[image_index == image]:
            canvas[row:row + N, col:col + N] |= lit
        unlit += int(np.count_nonzero(~canvas[row0:row1, col0:col1]))
    return unlit / (len(images) * (row1 - row0) * (col1 - col0))


# --- inference: group canvases -> whole objects (numpy) ----------------------------------------------------

def assemble_objects(canvases: np.ndarray, canvas_weights: np.ndarray, origins: np.ndarray,
                     group_image: np.ndarray, object_shape: tuple[int, int, int]) -> np.ndarray:
    """Whole objects (I, H, W) from group canvases (G, side, side) placed at ``origins`` (G, 2).

    A group's canvas is determined up to one constant phase (the far field cannot see it), and
    neighbouring groups may carry different ones: averaging them as they are would cancel amplitude
    where they overlap. So groups are added in raster order, each first turned by the phase that best
    matches what is already assembled under it (the weighted mean of conj(canvas) x assembled over
    the overlap), then averaged with the canvas weights. Consistent canvases need no turn (phase 0).
    """
    numerator = np.zeros(object_shape, dtype=np.complex128)
    weight = np.zeros(object_shape, dtype=np.float64)
    side = canvases.shape[-1]
    for g in np.lexsort((origins[:, 1], origins[:, 0], group_image)):
        image, (row, col) = group_image[g], origins[g]
        region = (image, slice(row, row + side), slice(col, col + side))
        w = canvas_weights[g][: numerator[region].shape[0], : numerator[region].shape[1]]
        canvas = canvases[g][: w.shape[0], : w.shape[1]]
        assembled = numerator[region] / np.maximum(weight[region], 1e-30)  # 0 where nothing yet
        agreement = np.sum(np.minimum(weight[region], w) * assembled * np.conj(canvas))
        turned = canvas * (np.exp(1j * np.angle(agreement)) if abs(agreement) > 0 else 1.0)
        numerator[region] += w * turned
        weight[region] += w
    covered = weight > 0
    return np.where(covered, numerator / np.where(covered, weight, 1.0), 0).astype(np.complex64)
