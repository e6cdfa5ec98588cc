"""The iterative baseline: the library's conventions against ours, and a short reconstruction."""

from __future__ import annotations

import dataclasses
import inspect
import time

import numpy as np
import pytest
import torch

pytest.importorskip("cdtools", reason='the iterative baseline engine is not installed (pip install -e ".[baselines]")')

from ptycho_torch import baseline  # noqa: E402
from ptycho_torch.metrics import score_objects  # noqa: E402
from ptycho_torch.physics import forward_amplitude  # noqa: E402
from ptycho_torch.scan import extract_patches, stitched_region  # noqa: E402
from ptycho_torch.simulation import simulate_splits  # noqa: E402
from tests.helpers import TINY_SIMULATION  # noqa: E402


@pytest.fixture(scope="module")
def test_split():
    return simulate_splits(TINY_SIMULATION)["test"]


@pytest.fixture(scope="module")
def dense_split():
    """Stride 4 (25 patterns): overlap enough for the engine to converge in a few hundred iterations
    (at stride 8 the 9 patterns of the tiny object leave its phase ill-determined)."""
    return simulate_splits(dataclasses.replace(TINY_SIMULATION, test_stride=4))["test"]


@pytest.fixture(scope="module")
def bright_split():
    """Many photons: a low noise floor, so that a convention error of any size shows."""
    return simulate_splits(dataclasses.replace(TINY_SIMULATION, nphotons=1e12))["test"]


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def noise_floor(data) -> float:
    """How far the stored (noisy) diffraction lies from our own noiseless forward model of the truth."""
    patches = extract_patches(data.objectGuess, data.coords, data.N, data.image_index)
    ours = forward_amplitude(torch.from_numpy(patches), torch.from_numpy(data.probeGuess)).numpy()
    return rms(ours - data.diffraction)


def library_residual(data, coords: np.ndarray, intensity_scale: float, obj: np.ndarray | None = None) -> float:
    obj = data.objectGuess[0] if obj is None else obj
    simulated = baseline.simulated_amplitudes(obj, data.probeGuess, coords, intensity_scale)
    return rms(simulated - data.diffraction)


@pytest.mark.parametrize("split", ["test_split", "bright_split"])
def test_the_librarys_forward_model_of_the_truth_reproduces_the_stored_diffraction_to_the_noise_floor(split, request):
    data = request.getfixturevalue(split)
    floor = noise_floor(data)
    assert floor > 0  # Poisson noise is in the data
    assert library_residual(data, data.coords, data.intensity_scale) <= 1.01 * floor
    patches = extract_patches(data.objectGuess, data.coords, data.N, data.image_index)
    ours = forward_amplitude(torch.from_numpy(patches), torch.from_numpy(data.probeGuess)).numpy()
    theirs = baseline.simulated_amplitudes(data.objectGuess[0], data.probeGuess, data.coords, data.intensity_scale)
    np.testing.assert_allclose(theirs, ours, atol=1e-5 * float(ours.max()))


WRONG_CONVENTIONS = {
    "positions one row down": lambda coords: coords + [1, 0],
    "positions one column right": lambda coords: coords + [0, 1],
    "row and column swapped": lambda coords: coords[:, ::-1].copy(),
}


@pytest.mark.parametrize("wrong", WRONG_CONVENTIONS, ids=list(WRONG_CONVENTIONS))
def test_a_wrong_position_convention_leaves_the_noise_floor_far_behind(test_split, wrong):
    data = test_split  # at the usual photon count: the wrong positions show even there
    padded = np.pad(data.objectGuess[0], ((0, 1), (0, 1)), constant_values=1)  # room for the shifted windows
    coords = WRONG_CONVENTIONS[wrong](data.coords)
    assert library_residual(data, coords, data.intensity_scale, padded) > 3 * noise_floor(data)


def test_patterns_in_the_files_own_units_meet_the_librarys_intensity_floor(bright_split):
    """Without the photon-count conversion the library's 1e-7 intensity floor shows above the noise."""
    data = bright_split
    assert library_residual(data, data.coords, 1.0) > 3 * noise_floor(data)


def phase_ssim(objects: np.ndarray, data) -> float:
    return score_objects(objects, data.YY_ground_truth)["mean"]["phase"]["ssim"]


def test_a_short_flat_start_reconstruction_improves_is_reproducible_and_leaves_the_global_generator_alone(dense_split):
    data = dense_split
    before = torch.random.get_rng_state()
    steps = list(baseline.iterate(data, 150, seed=4))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [s.iteration for s in steps] == list(range(151))
    assert all(b.seconds >= a.seconds for a, b in zip(steps, steps[1:])) and steps[-1].seconds > 0
    assert steps[0].objects.shape == data.YY_ground_truth.shape and steps[0].objects.dtype == np.complex64
    assert np.all(steps[0].objects == 1)  # the flat start
    start, end = score_objects(steps[0].objects, data.YY_ground_truth)["mean"], \
        score_objects(steps[-1].objects, data.YY_ground_truth)["mean"]
    assert end["amplitude"]["mae"] < 0.5 * start["amplitude"]["mae"]
    assert phase_ssim(steps[-1].objects, data) > phase_ssim(steps[0].objects, data) + 0.2
    again = list(baseline.iterate(data, 150, seed=4))
    np.testing.assert_array_equal(again[-1].objects, steps[-1].objects)
    other_order = list(baseline.iterate(data, 150, seed=5))
    assert not np.array_equal(other_order[-1].objects, steps[-1].objects)


def test_a_warm_start_is_scaled_to_the_data_and_starts_where_it_is_put(test_split):
    data = test_split
    r0, r1, c0, c1 = stitched_region(data.metadata["object_size"], data.N, data.metadata["stride"])
    truth = data.objectGuess[:, r0:r1, c0:c1]
    np.testing.assert_array_equal(truth, data.YY_ground_truth)
    canvas = baseline.start_objects(data, 3 * truth)[0]
    np.testing.assert_allclose(canvas[r0:r1, c0:c1], truth[0], rtol=0.05, atol=0.02)  # the factor 3 fitted away
    outside = np.ones(canvas.shape, dtype=bool)
    outside[r0:r1, c0:c1] = False
    np.testing.assert_allclose(canvas[outside], baseline.flat_fill(canvas[r0:r1, c0:c1]), rtol=1e-5)


def test_a_warm_start_fits_to_the_same_canvas_whatever_scale_it_is_given_at(test_split):
    """|F(c O P)| = c |F(O P)|: the least-squares factor makes up any scale of the start, so a start at a
    fifth of the truth and one at three times it become the same canvas."""
    data = test_split
    small, large = (baseline.start_objects(data, k * data.YY_ground_truth)[0] for k in (0.2, 3.0))
    np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-7)


def test_the_canvas_spans_the_rows_and_the_columns_of_the_scan_each(test_split):
    """The tiny test scan without its last row of patches: rows [0, 8 + 16), columns [0, 16 + 16)."""
    data = test_split
    keep = data.coords[:, 0] < data.coords[:, 0].max()
    wide = dataclasses.replace(data, coords=data.coords[keep], image_index=data.image_index[keep],
                               diffraction=data.diffraction[keep], Y_I=data.Y_I[keep], Y_phi=data.Y_phi[keep])
    assert baseline.canvas_shape(wide.coords, wide.N) == (24, 32)
    (flat,) = baseline.start_objects(wide, None)
    assert flat.shape == (24, 32) and np.all(flat == 1)


def test_the_batch_size_and_step_are_the_librarys_own_defaults():
    defaults = inspect.signature(baseline.engine().reconstructors.AdamReconstructor.optimize).parameters
    assert baseline.BATCH_SIZE == defaults["batch_size"].default
    assert baseline.LEARNING_RATE == defaults["lr"].default


def test_the_seconds_grow_with_every_iteration_within_the_wall_time(test_split):
    started = time.perf_counter()
    steps = list(baseline.iterate(test_split, 2))
    elapsed = time.perf_counter() - started
    assert 0 < steps[0].seconds < steps[1].seconds < steps[2].seconds <= elapsed


def test_a_warm_start_is_as_good_at_any_global_phase(test_split):
    """The margin around a warm start follows its phase: rotating the start by a global phase (which
    no pattern can see) leaves its patterns' misfit as it was."""
    data = test_split

    def misfit(init: np.ndarray) -> float:
        canvas = baseline.start_objects(data, init)[0]
        return library_residual(data, data.coords, data.intensity_scale, canvas)

    assert misfit(data.YY_ground_truth * np.exp(2.5j)) == pytest.approx(misfit(data.YY_ground_truth), rel=0.01)


def test_run_scores_each_count_and_finds_when_the_target_is_reached(dense_split):
    data = dense_split
    flat = baseline.run(data, [3, 8])
    assert sorted(flat["at"]) == [3, 8] and flat["reached"] is None
    target = flat["at"][8]["metrics"]["mean"]["phase"]["ssim"]
    warm = baseline.run(data, [3, 8], init=data.YY_ground_truth, target_phase_ssim=target)
    assert warm["reached"]["iterations"] == 0  # the truth already beats eight flat iterations
    unreachable = baseline.run(data, [2], target_phase_ssim=1.5)
    assert unreachable["reached"] is None
    reachable = baseline.run(data, [8], target_phase_ssim=target)
    assert reachable["reached"]["iterations"] <= 8
    assert reachable["reached"]["seconds"] <= reachable["at"][8]["seconds"]


@pytest.mark.parametrize(("num_threads", "expected"), [
    (0, [{"iteration": 0, "threads": 2}, {"iteration": 4, "threads": 1}]),
    (2, [{"iteration": 0, "threads": 2}]),
])
def test_an_automatic_thread_count_is_re_chosen_between_iterations(test_split, machine, monkeypatch, num_threads,
                                                                     expected):
    """As a fit between steps: a core taken by another process from the second window on lowers the
    count after the third iteration (two windows in a row); an explicit count is kept."""
    from ptycho_torch import cpu_settings
    from tests.helpers import ScriptedWindow

    machine(2, 0.0)
    window = ScriptedWindow([0.0, 1.0])  # each iteration lasts a window here
    monkeypatch.setattr(cpu_settings, "LoadWindow", lambda: window)
    before = torch.get_num_threads()
    with cpu_settings.intra_op_threads(num_threads):
        result = baseline.run(test_split, [6])
    assert result["threads"] == expected
    assert torch.get_num_threads() == before


def test_each_test_object_is_reconstructed_from_its_own_patterns():
    data = simulate_splits(dataclasses.replace(TINY_SIMULATION, n_test_images=2, test_stride=4))["test"]
    last = list(baseline.iterate(data, 250))[-1]
    assert last.objects.shape == data.YY_ground_truth.shape and len(last.objects) == 2
    errors = [[float(np.abs(np.abs(last.objects[i]) - np.abs(data.YY_ground_truth[j])).mean()) for j in (0, 1)]
              for i in (0, 1)]
    assert errors[0][0] < errors[0][1] and errors[1][1] < errors[1][0]  # each nearer its own truth
