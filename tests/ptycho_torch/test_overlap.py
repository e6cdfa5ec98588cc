"""Oracles for the overlap constraint: every reassembly step against the object itself.

Each oracle compares the real code path (grouping, merge, re-extraction, the training loss, the
inference and stitching path) with an answer that a wrong merge cannot reproduce: the object the
patches were cut from. Each is shown to go red on a deliberately broken merge or stitch (a
translation sign flip, swapped row/col, a denominator without the numerator's support, patches
tiled as if they did not overlap).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptycho_torch import overlap, preflight
from ptycho_torch.config import ModelConfig, SimulationConfig, TrainingConfig
from ptycho_torch.model import PtychoPINN
from ptycho_torch.overlap import extract_from_canvas, group_members, group_offsets, merge_patches
from ptycho_torch.probe import ideal_probe
from ptycho_torch.reconstruction import stitch_objects
from ptycho_torch.scan import extract_patches, raster_positions, stitched_region
from ptycho_torch.simulation import far_field, simulate_split
from ptycho_torch.training import predict_patches
from tests.helpers import examples
from tests.strategies import seeds

ORACLE_RUNS = settings(max_examples=examples(40), deadline=None)


@dataclasses.dataclass
class Scan:
    obj: np.ndarray  # (S, S) complex64, random and not symmetric
    coords: np.ndarray  # (M, 2) as the simulator cuts patches
    patches: np.ndarray  # (M, N, N)
    groups: np.ndarray  # (G, C)
    offsets: np.ndarray  # (G, C, 2)
    weights: torch.Tensor  # (N, N) the real merge weights (probe intensity)
    N: int


@st.composite
def scans(draw, gridsizes=(1, 2), raster: bool = True):
    N = draw(st.sampled_from([16, 32]))
    stride = draw(st.integers(1, N // 2) if N == 16 else st.sampled_from([2, 4, 8, 16]))
    steps = draw(st.integers(1 if raster else 2, 4))
    gridsize = draw(st.sampled_from(gridsizes))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    size = N + stride * steps
    obj = (rng.uniform(0.1, 1.0, (size, size)) * np.exp(1j * rng.uniform(-3, 3, (size, size)))).astype(np.complex64)
    coords = raster_positions(size, N, stride)
    if not raster:  # an irregular scan: jittered positions, one dropped
        coords = np.clip(coords + rng.integers(-1, 2, coords.shape), 0, size - N)[1:]
    image_index = np.zeros(len(coords), dtype=np.int64)
    groups = group_members(coords, image_index, gridsize)
    weights = overlap.overlap_weights(torch.from_numpy(ideal_probe(N, draw(st.sampled_from([0.0, 1.0])))))
    return Scan(obj, coords, extract_patches(obj, coords, N), groups, group_offsets(coords, groups), weights, N)


def merged(scan: Scan, merge=merge_patches) -> tuple[torch.Tensor, torch.Tensor]:
    """(canvas (G, side, side), coverage (G, side, side) bool) of the groups' true patches."""
    patches = torch.from_numpy(scan.patches[scan.groups])  # (G, C, N, N)
    offsets = torch.from_numpy(scan.offsets)
    side = overlap.canvas_side(offsets, scan.N)
    canvas = merge(patches, offsets, scan.weights, side)
    coverage = merge(torch.ones_like(patches), offsets, scan.weights, side).abs() > 0.5
    return canvas, coverage


# --- broken merges, kept as tests that the oracles can fail -----------------------------------------

def merge_sign_flipped(patches, offsets, weights, side):
    """Translates each patch the wrong way (mirrored within the canvas)."""
    return merge_patches(patches, offsets.amax(dim=1, keepdim=True) - offsets, weights, side)


def merge_axes_swapped(patches, offsets, weights, side):
    """Reads (row, col) as (col, row)."""
    return merge_patches(patches, offsets.flip(-1), weights, side)


def merge_unmasked_denominator(patches, offsets, weights, side):
    """Numerator over every weighted pixel, denominator only where the weight passes a threshold (then
    floored): the two supports differ, and the dim periphery is divided by the floor."""
    B, C, N, _ = patches.shape
    index = overlap._flat_indices(offsets, N, side)
    w = weights.expand(B, C, N, N)
    numerator = torch.zeros(B, side * side, dtype=patches.dtype).index_put_(
        (torch.arange(B)[:, None].expand_as(index), index), (patches * w).flatten(1), accumulate=True)
    bright = w * (w > 0.1 * weights.max())
    denominator = torch.zeros(B, side * side).scatter_add_(1, index, bright.flatten(1))
    return (numerator / denominator.clamp_min(1e-3 * float(weights.max()))).reshape(B, side, side)


# --- oracle 1: consistent patches are a fixed point of merge + re-extract ----------------------------------

def fixed_point_error(scan: Scan, merge=merge_patches) -> float:
    canvas, coverage = merged(scan, merge)
    offsets = torch.from_numpy(scan.offsets)
    back = extract_from_canvas(canvas, offsets, scan.N)  # (G, C, N, N)
    covered = extract_from_canvas(coverage.to(torch.complex64), offsets, scan.N).real > 0.5
    truth = torch.from_numpy(scan.patches[scan.groups])
    return float(((back - truth).abs() * covered).max())


@ORACLE_RUNS
@given(scans())
def test_merge_then_reextract_returns_consistent_patches(scan):
    assert fixed_point_error(scan) < 1e-5


@ORACLE_RUNS
@given(scans(gridsizes=(2,), raster=False))
def test_the_fixed_point_holds_on_irregular_scans(scan):
    assert fixed_point_error(scan) < 1e-5


# --- oracle 2: the canvas is the object's own region at the group's position --------------------------------

def canvas_error(scan: Scan, merge=merge_patches) -> float:
    canvas, coverage = merged(scan, merge)
    side = canvas.shape[-1]
    origins = scan.coords[scan.groups].min(axis=1)  # (G, 2) the canvas's top-left in the object
    padded = np.pad(scan.obj, ((0, side), (0, side)))
    regions = np.stack([padded[r:r + side, c:c + side] for r, c in origins])  # (G, side, side)
    return float(((canvas - torch.from_numpy(regions)).abs() * coverage).max())


@ORACLE_RUNS
@given(scans())
def test_the_merged_canvas_is_the_objects_region_at_the_groups_position(scan):
    assert canvas_error(scan) < 1e-5


# --- oracle 3: no amplification: a constant stays constant, nothing exceeds the inputs ----------------------

def amplification(scan: Scan, merge=merge_patches) -> tuple[float, float]:
    """(largest deviation from a constant object's value, largest merged magnitude / largest input magnitude)
    for a constant object and for unrelated random patches."""
    value = np.complex64(0.6 * np.exp(0.4j))
    constant = dataclasses.replace(scan, patches=np.full_like(scan.patches, value))
    canvas, coverage = merged(constant, merge)
    deviation = float(((canvas - torch.tensor(value)).abs() * coverage).max())
    noise = np.random.default_rng(0).normal(size=scan.patches.shape) + 1j * np.random.default_rng(1).normal(
        size=scan.patches.shape)
    unrelated = dataclasses.replace(scan, patches=noise.astype(np.complex64))
    canvas, _ = merged(unrelated, merge)
    return deviation, float(canvas.abs().max() / np.abs(noise).max())


@ORACLE_RUNS
@given(scans())
def test_merging_never_amplifies(scan):
    deviation, ratio = amplification(scan)
    assert deviation < 1e-5 and ratio <= 1 + 1e-5


# --- the broken variants go red -------------------------------------------------------------------------

FIXED = dict(gridsizes=(2,))


@settings(max_examples=examples(10), deadline=None)
@given(scans(**FIXED))
def test_a_translation_sign_flip_breaks_the_canvas_oracle(scan):
    assert canvas_error(scan, merge_sign_flipped) > 1e-2


@settings(max_examples=examples(10), deadline=None)
@given(scans(**FIXED))
def test_swapped_axes_break_the_canvas_oracle(scan):
    assert canvas_error(scan, merge_axes_swapped) > 1e-2


@settings(max_examples=examples(10), deadline=None)
@given(scans(**FIXED))
def test_an_unmasked_denominator_breaks_the_amplification_oracle(scan):
    deviation, ratio = amplification(scan, merge_unmasked_denominator)
    assert deviation > 1e-2 or ratio > 1.01


# --- oracles 4 and 5: the real training loss and the real inference + stitching path --------------------------

SIM = SimulationConfig(N=16, object_size=48, n_lines=12, n_train_images=1, n_test_images=1, train_stride=4,
                       test_stride=8, set_phi=True, nphotons=1e12, probe_defocus=1.0, data_seed=5)


def noise_free(split: str):
    """A simulated split whose diffraction is the simulator's own noise-free far field."""
    stride = SIM.train_stride if split == "train" else SIM.test_stride
    probe = ideal_probe(SIM.N, SIM.probe_defocus)
    data = simulate_split(SIM, 1, stride, np.random.default_rng(5), probe, split=split)
    clean = far_field(data.objectGuess, data.coords, data.image_index, probe)  # (M, N, N)
    return dataclasses.replace(data, diffraction=clean)


class PatchesFromIndex(PtychoPINN):
    """The real module with its generator replaced by a lookup: the pattern's index rides in pixel (0, 0)."""

    candidate: torch.Tensor  # (M, N, N) complex64

    def forward(self, diffraction):
        index = diffraction[..., 0, 0].long()  # (B,) or (B, C)
        return self.candidate[index]


def indexed(data):
    marked = data.diffraction.copy()
    marked[:, 0, 0] = np.arange(len(marked))
    return dataclasses.replace(data, diffraction=marked)


def module_for(gridsize: int, data, candidate: np.ndarray) -> PatchesFromIndex:
    training = TrainingConfig(model=ModelConfig(N=SIM.N, gridsize=gridsize, cnn_channels=2), torch_loss_mode="mae")
    module = PatchesFromIndex(training, torch.from_numpy(data.probeGuess))
    module.candidate = torch.from_numpy(candidate.astype(np.complex64))
    return module


def training_loss(gridsize: int, data, candidate_object: np.ndarray) -> float:
    """The real loss (module.loss on the datamodule's own items) of the patches cut from a candidate object."""
    from ptycho_torch.datamodule import GroupDataset, PatternDataset

    candidate = extract_patches(candidate_object, data.coords, SIM.N, data.image_index)
    module = module_for(gridsize, data, candidate)
    dataset = PatternDataset(indexed(data)) if gridsize == 1 else GroupDataset(indexed(data), gridsize)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    clean = torch.from_numpy(data.diffraction)
    members = dataset.groups if gridsize > 1 else torch.arange(len(clean))
    batch["diffraction"] = _with_index(clean[members], batch["diffraction"])
    return float(module.loss(batch))


def _with_index(clean: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """The clean patterns for the loss, with the index kept where the lookup reads it."""
    out = clean.clone()
    out[..., 0, 0] = marked[..., 0, 0]
    return out


@pytest.mark.parametrize("gridsize", [1, 2])
def test_the_true_object_has_the_lowest_training_loss(gridsize):
    data = noise_free("train")
    obj = data.objectGuess  # (1, S, S)
    twin = np.conj(obj[:, ::-1, ::-1])  # conj(O(-r))
    candidates = {
        "flat": np.full_like(obj, np.abs(obj).mean()),
        "shifted by one pixel": np.roll(obj, 1, axis=-1),
        "twin": twin,
    }
    true_loss = training_loss(gridsize, data, obj)
    for name, candidate in candidates.items():
        assert true_loss < training_loss(gridsize, data, candidate), name


def stitched_error(gridsize: int, tile=None) -> float:
    data = noise_free("test")
    truth = extract_patches(data.objectGuess, data.coords, SIM.N, data.image_index)  # (M, N, N)
    module = module_for(gridsize, data, truth)
    patches = predict_patches(module, indexed(data), batch_size=5).numpy()
    stitched = stitch_objects(patches, data) if tile is None else tile(patches, data)
    ground = data.YY_ground_truth
    return max(float(np.abs(np.abs(stitched) - np.abs(ground)).mean()),
               float(np.abs(np.angle(stitched * np.conj(ground))).mean()))


def tiled_without_overlap(patches: np.ndarray, data) -> np.ndarray:
    """The checkerboard bug: whole patches laid side by side as if the scan did not overlap."""
    n = int(round(np.sqrt(len(patches))))
    side = data.YY_ground_truth.shape[-1]
    tiles = patches.reshape(n, n, SIM.N, SIM.N).swapaxes(1, 2).reshape(n * SIM.N, n * SIM.N)
    return tiles[None, :side, :side]


@pytest.mark.parametrize("gridsize", [1, 2])
def test_true_patches_through_inference_and_stitching_give_back_the_object(gridsize):
    assert stitched_error(gridsize) < 1e-5


def test_a_flat_tiled_stitch_breaks_the_stitching_oracle():
    assert stitched_error(2, tiled_without_overlap) > 1e-2


# --- assembling group canvases: each group's free constant phase must not cancel amplitude -------------------

def turned_canvases(scan: Scan, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true groups' canvases, each turned by its own random constant phase, with weights and origins."""
    patches = torch.from_numpy(scan.patches[scan.groups])
    canvas, weight = overlap.merge_with_weight(patches, torch.from_numpy(scan.offsets), scan.weights)
    turns = np.exp(1j * np.random.default_rng(seed).uniform(-np.pi, np.pi, len(canvas)))[:, None, None]
    return canvas.numpy() * turns, weight.numpy(), scan.coords[scan.groups].min(axis=1)


def assembly_error(scan: Scan, seed: int, assemble=overlap.assemble_objects) -> float:
    """Largest error of the assembled object against the truth, after removing one global phase."""
    canvases, weights, origins = turned_canvases(scan, seed)
    shape = (1, *scan.obj.shape)
    obj = assemble(canvases, weights, origins, np.zeros(len(canvases), dtype=np.int64), shape)[0]
    covered = np.abs(obj) > 0
    turn = np.exp(1j * np.angle(np.sum(obj[covered] * np.conj(scan.obj[covered]))))
    return float(np.abs(obj * np.conj(turn) - scan.obj)[covered].max())


def assemble_without_alignment(canvases, weights, origins, group_image, shape):
    """The plain weighted mean of the canvases, each group's phase as it comes."""
    numerator, total = np.zeros(shape, np.complex128), np.zeros(shape)
    side = canvases.shape[-1]
    for canvas, weight, (row, col) in zip(canvases, weights, origins):
        numerator[0, row:row + side, col:col + side] += weight * canvas
        total[0, row:row + side, col:col + side] += weight
    return np.where(total > 0, numerator / np.where(total > 0, total, 1), 0)


@settings(max_examples=examples(20), deadline=None)
@given(scans(gridsizes=(2,)), st.integers(0, 1000))
def test_assembled_groups_give_the_object_up_to_one_global_phase(scan, seed):
    assert assembly_error(scan, seed) < 1e-4


@settings(max_examples=examples(10), deadline=None)
@given(scans(gridsizes=(2,)), st.integers(0, 1000))
def test_assembly_without_phase_alignment_breaks_the_assembly_oracle(scan, seed):
    if len(scan.groups) > 1:  # one group alone has nothing to disagree with
        assert assembly_error(scan, seed, assemble_without_alignment) > 1e-2


def test_a_gridsize_1_run_never_enters_the_overlap_code(tmp_path, monkeypatch):
    """Gridsize 1 stays the single-pattern pipeline: no grouping, merge or assembly runs."""
    from ptycho_torch import datamodule, model, training
    from scripts.studies import grid_lines_torch_runner as runner
    from tests.helpers import TINY_ARGV

    def refuse(*args, **kwargs):
        raise AssertionError("overlap code ran at gridsize 1")

    for module, name in ((model, "merge_with_weight"), (training, "assemble_objects"), (training, "group_members"),
                         (datamodule, "GroupDataset")):
        monkeypatch.setattr(module, name, refuse)
    assert runner.main([*TINY_ARGV, "--gridsize", "1", "--output-dir", str(tmp_path / "run")]) == 0


@settings(max_examples=examples(20), deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(3, 8))
def test_raster_groups_are_spaced_as_asked(step, multiple, positions):
    """Members sit ``spacing`` apart (the nearest multiple of the raster step that fits the raster)."""
    N = 16
    coords = raster_positions(N + step * (positions - 1), N, step)
    groups = group_members(coords, np.zeros(len(coords), dtype=np.int64), 2, spacing=step * multiple)
    k = min(multiple, positions - 1)
    assert len(groups) == (positions - k) ** 2
    offsets = group_offsets(coords, groups)
    assert np.array_equal(offsets, np.broadcast_to([[0, 0], [0, k * step], [k * step, 0], [k * step, k * step]],
                                                   offsets.shape))


def unlit_by_definition(weights: np.ndarray, coords: np.ndarray, image_index: np.ndarray, region) -> float:
    """Pixel by pixel: a region pixel is lit when some position of its object puts weight above the floor on it."""
    N, (row0, row1, col0, col1) = weights.shape[-1], region
    floor = overlap.WEIGHT_FLOOR * weights.max()
    unlit = total = 0
    for image in np.unique(image_index):
        corners = coords[image_index == image]
        for row in range(row0, row1):
            for col in range(col0, col1):
                inside = [(row - r, col - c) for r, c in corners if 0 <= row - r < N and 0 <= col - c < N]
                unlit += not any(weights[dr, dc] > floor for dr, dc in inside)
                total += 1
    return unlit / total


@settings(deadline=None, max_examples=examples(30))
@given(N=st.integers(2, 6), strides=st.lists(st.integers(1, 6), min_size=1, max_size=2), size=st.integers(6, 14),
       radius=st.floats(0.3, 4.0), seed=seeds)
def test_the_unlit_share_is_the_share_of_region_pixels_no_position_lights(N, strides, size, radius, seed):
    """Against the definition pixel by pixel, for disks of any size (down to one lit pixel, a weight
    just under the floor), one or two objects scanned at their own strides."""
    rng = np.random.default_rng(seed)
    centre = (N - 1) / 2
    distance = np.hypot(*np.meshgrid(np.arange(N) - centre, np.arange(N) - centre, indexing="ij"))
    weights = np.where(distance <= radius, rng.uniform(0.5, 1.0, (N, N)), overlap.WEIGHT_FLOOR * 0.99)
    weights[np.unravel_index(np.argmin(distance), distance.shape)] = 1.0  # the peak: at least one lit pixel
    strides = [min(stride, N) for stride in strides]
    coords = np.concatenate([raster_positions(size, N, stride) for stride in strides])
    image_index = np.concatenate([np.full(len(raster_positions(size, N, stride)), i) for i, stride in enumerate(strides)])
    region = stitched_region(size, N, strides[0])
    assert overlap.unlit_fraction(weights, coords, image_index, region) == pytest.approx(
        unlit_by_definition(weights, coords, image_index, region), abs=1e-12)


@pytest.mark.parametrize("test_stride", [8, 16])
def test_the_unlit_share_is_where_a_gridsize_2_reconstruction_is_zero(test_stride):
    """Each pattern answered with its true patch: at stride 8 the stitched object is covered; at
    stride N the probe's dark corners between positions stay 0, exactly the unlit share."""
    data = noise_free("test")
    if test_stride != SIM.test_stride:
        probe = ideal_probe(SIM.N, SIM.probe_defocus)
        data = simulate_split(dataclasses.replace(SIM, test_stride=test_stride), 1, test_stride,
                              np.random.default_rng(5), probe, split="test")
    truth = extract_patches(data.objectGuess, data.coords, SIM.N, data.image_index)
    stitched = stitch_objects(predict_patches(module_for(2, data, truth), indexed(data), batch_size=5).numpy(), data)
    share = preflight.unlit_share(ModelConfig(N=SIM.N, gridsize=2), data.probeGuess, data.coords, data.image_index,
                                  SIM.object_size, test_stride)
    assert np.mean(stitched == 0) == share
    assert (share > 0.2) == (test_stride == SIM.N)


# --- grouping edge cases -------------------------------------------------------------------------------

def raster(rows, cols) -> np.ndarray:
    """(len(rows) * len(cols), 2) row-major raster positions at the given row and column offsets."""
    r, c = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1)


@pytest.mark.parametrize("shape", [(2, 3), (3, 2)])
def test_a_raster_two_positions_deep_groups_into_its_sliding_2x2_blocks(shape):
    """Two rows (or columns) is still a raster: (n_rows - 1) (n_cols - 1) blocks, not one group per pattern."""
    n_rows, n_cols = shape
    coords = raster(4 * np.arange(n_rows), 4 * np.arange(n_cols))
    groups = group_members(coords, np.zeros(len(coords), dtype=np.int64), 2)
    want = [[r * n_cols + c, r * n_cols + c + 1, (r + 1) * n_cols + c, (r + 1) * n_cols + c + 1]
            for r in range(n_rows - 1) for c in range(n_cols - 1)]
    assert groups.tolist() == want


def test_a_raster_away_from_the_origin_groups_as_the_same_raster_at_the_origin():
    """The raster step is the spacing between rows, not where they start: spacing 8 on a step-4
    raster puts members two steps apart wherever the raster sits."""
    at_origin = raster(4 * np.arange(5), 4 * np.arange(5))
    index = np.zeros(len(at_origin), dtype=np.int64)
    want = group_members(at_origin, index, 2, spacing=8)
    assert group_offsets(at_origin, want)[0].tolist() == [[0, 0], [0, 8], [8, 0], [8, 8]]
    for shift in ([4, 4], [12, 4], [3, 7]):
        assert np.array_equal(group_members(at_origin + shift, index, 2, spacing=8), want)


@pytest.mark.parametrize("side, gridsize", [(3, 2), (5, 3), (4, 2)])
def test_a_spacing_beyond_the_raster_gives_its_outermost_block(side, gridsize):
    """The spacing is clamped to what fits: members (side - 1) // (gridsize - 1) steps apart."""
    coords = raster(4 * np.arange(side), 4 * np.arange(side))
    groups = group_members(coords, np.zeros(len(coords), dtype=np.int64), gridsize, spacing=1000)
    k = (side - 1) // (gridsize - 1)
    blocks = side - k * (gridsize - 1)  # per axis
    assert len(groups) == blocks ** 2
    first = [r * k * side + c * k for r in range(gridsize) for c in range(gridsize)]
    assert groups[0].tolist() == first


def test_an_irregular_scan_of_exactly_one_group_of_positions_groups_without_error():
    """gridsize^2 positions are enough: every pattern's group is all of them, row-major."""
    coords = np.array([[0, 0], [0, 5], [7, 1], [6, 6]])
    groups = group_members(coords, np.zeros(4, dtype=np.int64), 2)
    assert groups.tolist() == [[0, 1, 3, 2]] * 4
    with pytest.raises(ValueError, match="at least 4"):
        group_members(coords[:3], np.zeros(3, dtype=np.int64), 2)


# --- coverage does not depend on the probe's brightness --------------------------------------------------

@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_merge_coverage_and_unlit_share_do_not_depend_on_the_scale_of_the_weights(scale):
    """WEIGHT_FLOOR is relative to the largest weight: a dimmer or brighter probe covers the same pixels."""
    N = 16
    weights = overlap.overlap_weights(torch.from_numpy(ideal_probe(N, 1.0))).double()  # peak 1, tails ~1e-9
    assert (weights < 1e-4).any() and (weights > 1e-4).any()  # the floor, wrongly scaled, would move
    rng = np.random.default_rng(0)
    patches = torch.from_numpy(rng.standard_normal((1, 4, N, N)) + 1j * rng.standard_normal((1, 4, N, N)))
    offsets = torch.tensor([[[0, 0], [0, 6], [6, 0], [6, 6]]])
    canvas, weight = overlap.merge_with_weight(patches, offsets, weights)
    scaled_canvas, scaled_weight = overlap.merge_with_weight(patches, offsets, weights * scale)
    torch.testing.assert_close(scaled_canvas, canvas, rtol=1e-12, atol=0)
    torch.testing.assert_close(scaled_weight / scale, weight, rtol=1e-12, atol=0)
    coords, image_index = np.array([[0, 0], [0, 16], [16, 0], [16, 16]]), np.zeros(4, dtype=np.int64)
    unlit = overlap.unlit_fraction(weights.numpy(), coords, image_index, (0, 32, 0, 32))
    assert 0 < unlit < 1
    assert overlap.unlit_fraction(weights.numpy() * scale, coords, image_index, (0, 32, 0, 32)) == unlit


def test_a_weight_exactly_at_the_floor_counts_as_uncovered():
    """The documented rule is denominator > WEIGHT_FLOOR x the peak: at the floor, nothing is measured."""
    weights = torch.ones(2, 2, dtype=torch.float64)
    weights[1, 1] = overlap.WEIGHT_FLOOR  # peak 1, so exactly WEIGHT_FLOOR * peak
    canvas, weight = overlap.merge_with_weight(torch.full((1, 1, 2, 2), 0.5 + 0j, dtype=torch.complex128),
                                               torch.zeros(1, 1, 2, dtype=torch.int64), weights)
    assert canvas[0].tolist() == [[0.5, 0.5], [0.5, 0]] and weight[0].tolist() == [[1, 1], [1, 0]]
    share = overlap.unlit_fraction(weights.numpy(), np.array([[0, 0]]), np.zeros(1, dtype=np.int64), (0, 2, 0, 2))
    assert share == 0.25


# --- assembly: the agreement turn, by hand --------------------------------------------------------------

def test_the_assembly_turn_is_the_overlap_weighted_agreement_with_what_is_assembled():
    """Two 2 x 2 canvases overlapping in one column, their phases inconsistent pixel by pixel: the second
    is turned by angle(sum over the overlap of min(w1, w2) a conj(b)), with a the first canvas's values
    (not its weighted sum), then both are averaged with their weights."""
    a = np.array([[1.0, 0.8 * np.exp(0.3j)], [0.6, 1.2 * np.exp(-0.2j)]])
    b = np.array([[0.9 * np.exp(2.0j), 0.7], [np.exp(1.1j), 0.5j]])
    wa = np.array([[0.05, 0.2], [0.05, 0.7]])  # weights well below 1, and unequal along the overlap
    wb = np.array([[0.6, 0.1], [0.3, 0.4]])
    turn = np.exp(1j * np.angle(np.sum(np.minimum(wa[:, 1], wb[:, 0]) * a[:, 1] * np.conj(b[:, 0]))))
    want = np.zeros((2, 3), complex)
    want[:, 0] = a[:, 0]
    want[:, 1] = (wa[:, 1] * a[:, 1] + wb[:, 0] * turn * b[:, 0]) / (wa[:, 1] + wb[:, 0])
    want[:, 2] = turn * b[:, 1]
    got = overlap.assemble_objects(np.stack([a, b]), np.stack([wa, wb]), np.array([[0, 0], [0, 1]]),
                                   np.zeros(2, dtype=np.int64), (1, 2, 3))
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-7)


def test_assembling_with_pixels_no_canvas_covers_leaves_them_zero_without_warnings():
    import warnings

    canvases = np.ones((1, 2, 2), complex)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = overlap.assemble_objects(canvases, np.ones((1, 2, 2)), np.array([[0, 0]]), np.zeros(1, dtype=np.int64),
                                       (1, 3, 3))
    assert got[0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
