"""Grid-lines objects: line drawing, three-scale blur, normalisation, phase rule, seeding."""

import itertools

import numpy as np
import torch  # noqa: F401 -- module-scope import keeps Hypothesis timings stable across the suite
from hypothesis import given
from hypothesis import strategies as st

from ptycho_torch.objects import (as_complex, blurred_amplitude, draw_lines, grid_lines_amplitude_phase,
                                  phase_from_amplitude)
from tests.helpers import gaussian_kernel
from tests.strategies import rng_seeds


@given(st.integers(2, 64), rng_seeds)
def test_one_line_is_one_horizontal_or_vertical_run(canvas, seed):
    lines = draw_lines(canvas, 1, np.random.default_rng(seed))
    rows, cols = np.nonzero(lines)
    assert set(np.unique(lines)) <= {0.0, 1.0} and len(rows) >= 1
    along = cols if len(np.unique(rows)) == 1 else rows
    assert len(np.unique(rows)) == 1 or len(np.unique(cols)) == 1
    assert np.array_equal(np.sort(along), np.arange(along.min(), along.max() + 1))  # contiguous


@given(st.integers(16, 80), st.integers(0, 200), rng_seeds, st.booleans())
def test_object_maps_are_float32_with_amplitude_peak_one(size, n_lines, seed, set_phi):
    amplitude, phase = grid_lines_amplitude_phase(size, n_lines, np.random.default_rng(seed), set_phi=set_phi)
    assert amplitude.shape == phase.shape == (size, size)
    assert amplitude.dtype == phase.dtype == np.float32
    assert amplitude.max() == 1.0 and amplitude.min() >= 0.0
    assert np.all(np.abs(phase) <= np.float32(np.pi))  # tanh saturates to +-1 for sparse objects
    if not set_phi:
        assert not phase.any()


def test_set_phi_follows_the_tanh_rule():
    amplitude, phase = grid_lines_amplitude_phase(64, 40, np.random.default_rng(3), set_phi=True)
    a = amplitude.astype(np.float64)
    want = np.pi * np.tanh((a - a.max() / 2) / (3 * a.mean()))
    np.testing.assert_allclose(phase, want, rtol=1e-6, atol=1e-6)
    assert phase.min() < 0 < phase.max()  # dark and bright regions get opposite phase


def test_no_lines_gives_a_flat_transmitting_object():
    amplitude, phase = grid_lines_amplitude_phase(32, 0, np.random.default_rng(0), set_phi=True)
    assert np.all(amplitude == 1.0)
    np.testing.assert_array_equal(phase, phase_from_amplitude(amplitude))


def test_same_generator_state_gives_bitwise_identical_objects_and_another_seed_differs():
    first = grid_lines_amplitude_phase(48, 30, np.random.default_rng(7))
    again = grid_lines_amplitude_phase(48, 30, np.random.default_rng(7))
    other = grid_lines_amplitude_phase(48, 30, np.random.default_rng(8))
    assert first[0].tobytes() == again[0].tobytes()
    assert not np.array_equal(first[0], other[0])


def test_as_complex_builds_amplitude_times_phase_factor():
    amplitude = np.array([[1.0, 0.5]], dtype=np.float32)
    phase = np.array([[0.0, np.pi / 2]], dtype=np.float32)
    obj = as_complex(amplitude, phase)
    assert obj.dtype == np.complex64
    np.testing.assert_allclose(obj, [[1.0, 0.5j]], atol=1e-7)


def sampled_gaussian(offsets: np.ndarray, sigma: float) -> np.ndarray:
    """``gaussian_kernel(sigma)`` read at integer offsets, 0 beyond its window."""
    kernel = gaussian_kernel(sigma)
    half = len(kernel) // 2
    return np.where(np.abs(offsets) <= half, kernel[np.clip(offsets + half, 0, 2 * half)], 0.0)


def test_the_blur_is_one_g1_plus_two_g5_plus_five_g10():
    """B = G_1 * L + 2 G_5 * L + 5 G_10 * L, cropped and scaled to a peak of 1: on one lit pixel, B is
    that sum of separable Gaussians centred on it."""
    canvas_size, size, pixel = 100, 60, (47, 55)
    canvas = np.zeros((canvas_size, canvas_size))
    canvas[pixel] = 1.0
    start = (canvas_size - size) // 2
    dy = np.arange(start, start + size)[:, None] - pixel[0]
    dx = np.arange(start, start + size)[None, :] - pixel[1]
    want = sum(w * sampled_gaussian(dy, s) * sampled_gaussian(dx, s) for s, w in ((1.0, 1.0), (5.0, 2.0), (10.0, 5.0)))
    np.testing.assert_allclose(blurred_amplitude(canvas, size), want / want.max(), rtol=1e-5, atol=1e-7)


def test_lines_are_horizontal_or_vertical_by_a_fair_coin():
    """Of 2000 single lines (lines of one pixel have no orientation and are left out), about half lie
    along a row: a fair coin gives 0.5 +- 0.011 (one standard deviation) at this count."""
    horizontal = vertical = 0
    for seed in range(2000):
        rows, cols = np.nonzero(draw_lines(64, 1, np.random.default_rng(seed)))
        if len(rows) > 1:
            horizontal += len(np.unique(rows)) == 1
            vertical += len(np.unique(cols)) == 1
    assert horizontal + vertical > 1900
    assert 0.45 < horizontal / (horizontal + vertical) < 0.55


def single_line_coverage(canvas_size: int) -> np.ndarray:
    """How often one line lights each pixel, by counting the recipe's equally likely choices: orientation,
    the row (or column) it lies on, its first pixel, and its length 1..C, cut off at the canvas edge."""
    coverage = np.zeros((canvas_size, canvas_size))
    choices = list(itertools.product((True, False), range(canvas_size), range(canvas_size), range(1, canvas_size + 1)))
    for horizontal, fixed, start, length in choices:
        line = np.zeros((canvas_size, canvas_size))
        line[fixed, start:min(start + length, canvas_size)] = 1.0
        coverage += line if horizontal else line.T
    return coverage / len(choices)


def test_one_line_lights_each_pixel_as_often_as_its_recipe_says():
    """4000 single lines on a 3 x 3 canvas: each pixel is lit as often as the enumeration above says, within
    five standard errors. Lines that run on to the edge, never lie on or start at row / column 0, or draw
    their length from 2..C or 1..C - 1 miss by eight standard errors or more."""
    canvas_size, draws = 3, 4000
    lines = np.stack([draw_lines(canvas_size, 1, np.random.default_rng(seed)) for seed in range(draws)])
    assert lines.sum(axis=(1, 2)).min() >= 1  # a line is at least one pixel long
    want = single_line_coverage(canvas_size)
    standard_error = np.sqrt(want * (1 - want) / draws)
    assert np.all(np.abs(lines.mean(axis=0) - want) <= 5 * standard_error)


def test_objects_are_cut_from_lines_drawn_on_a_canvas_twice_their_side():
    size, n_lines = 24, 10
    amplitude, _ = grid_lines_amplitude_phase(size, n_lines, np.random.default_rng(11))
    canvas = draw_lines(2 * size, n_lines, np.random.default_rng(11))  # the same draws
    assert np.array_equal(amplitude, blurred_amplitude(canvas, size))
