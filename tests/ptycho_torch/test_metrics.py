"""Scores the study reports: perfect on the truth, alignment removes exactly its ambiguities, FRC50
against an independent ring sum, PSNR capped, and null (with a reason) where a score is undefined."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptycho_torch.metrics import (CONSTANT_AMPLITUDE, CONSTANT_PHASE, METRICS, NONFINITE, PSNR_CAP_DB,
                                  align_amplitude, align_phase, frc50, phase_image, score,
                                  score_objects, wrap)
from ptycho_torch.objects import as_complex, grid_lines_amplitude_phase
from tests.helpers import examples
from tests.strategies import rng_seeds as seeds, phase_planes, amplitude_scales, image_sides


SIDE = 32  # pixels; every object here is (SIDE, SIDE)
# Scoring whole images costs ~3 ms an example: a fifth of the profile's examples keeps this module
# to about a second and a half, while a larger profile still scales it up.
SCORING = settings(deadline=None, max_examples=examples(50))


def grid_lines_truth(seed: int, set_phi: bool = True) -> np.ndarray:
    """A small grid-lines ground truth as the study makes it, (SIDE, SIDE) complex64."""
    amplitude, phase = grid_lines_amplitude_phase(SIDE, 20, np.random.default_rng(seed), set_phi=set_phi)
    return as_complex(amplitude, phase)


def checkerboard(side: int) -> np.ndarray:
    """(-1)^(row + col): zero mean, and orthogonal to every plane a + b*row + c*col (side even)."""
    rows, cols = np.indices((side, side))
    return np.where((rows + cols) % 2 == 0, 1.0, -1.0)


def all_values(scores: dict) -> list:
    return [scores[channel][name] for channel in ("amplitude", "phase") for name in METRICS]


# --- perfect scores and the PSNR cap -------------------------------------------------------------

@SCORING  # torchmetrics' first call pays a one-off setup
@given(seeds)
def test_truth_scored_against_itself_is_perfect_in_every_metric(seed):
    truth = grid_lines_truth(seed)
    scores = score(truth, truth)
    for channel in ("amplitude", "phase"):
        got = scores[channel]
        assert got["mae"] == 0.0
        assert got["psnr"] == PSNR_CAP_DB
        assert got["ssim"] == pytest.approx(1.0, abs=1e-6)
        assert got["frc50"] == 0.5


@SCORING
@given(seeds, st.floats(1e-4, 1e-1))
def test_psnr_is_below_the_cap_and_matches_its_formula_once_the_image_differs(seed, relative_error):
    truth = grid_lines_truth(seed)
    noise = np.random.default_rng(seed).standard_normal(truth.shape)
    recon = truth * (1 + relative_error * noise)  # amplitude error only
    got = score(recon, truth)["amplitude"]["psnr"]
    amp_truth = np.abs(truth).astype(np.float64)
    aligned = align_amplitude(np.abs(recon), amp_truth)
    want = 10 * math.log10(np.ptp(amp_truth) ** 2 / np.mean((aligned - amp_truth) ** 2))
    assert got < PSNR_CAP_DB
    assert got == pytest.approx(want, abs=1e-6)


@SCORING
@given(seeds, st.floats(1e-3, 1.5))  # below pi/2, where the circular mean of exp(+-i error) turns round
def test_mae_and_psnr_equal_a_known_zero_mean_error(seed, error):
    """A checkerboard error survives both alignments untouched (zero mean, orthogonal to planes)."""
    truth = grid_lines_truth(seed).astype(np.complex128)
    amp_truth, phase_truth = np.abs(truth), np.angle(truth)
    recon = (amp_truth + error * 1e-2 * checkerboard(SIDE)) * np.exp(1j * (phase_truth + error * checkerboard(SIDE)))
    scores = score(recon, truth)
    for channel, size, data in (("amplitude", error * 1e-2, amp_truth), ("phase", error, phase_truth)):
        assert scores[channel]["mae"] == pytest.approx(size, rel=1e-9)
        assert scores[channel]["psnr"] == pytest.approx(20 * math.log10(np.ptp(data) / size), abs=1e-6)


# --- alignment ---------------------------------------------------------------------------------

@SCORING
@given(seeds, phase_planes)
@example(1, (2.5, 0.05, -0.04))  # offset + ramp push the phase past pi, so the recon wraps
@example(1, (-9.0, 0.09, 0.09))  # the ramp alone spans 5.6 rad, so it wraps too
def test_known_phase_offset_and_ramp_are_removed_exactly(seed, plane):
    truth = grid_lines_truth(seed).astype(np.complex128)
    offset, row_slope, col_slope = plane
    rows, cols = np.indices(truth.shape)
    recon = truth * np.exp(1j * (offset + row_slope * rows + col_slope * cols))
    aligned = align_phase(np.angle(recon), np.angle(truth))
    np.testing.assert_allclose(aligned, np.angle(truth), rtol=0, atol=1e-9)
    phase = score(recon, truth)["phase"]
    assert phase["mae"] < 1e-9 and phase["psnr"] == PSNR_CAP_DB
    assert phase["ssim"] == pytest.approx(1.0, abs=1e-6) and phase["frc50"] == 0.5


@SCORING
@given(seeds, st.floats(-np.pi, np.pi))
@example(0, np.pi - 0.1)  # the truth's phase then crosses +-pi
@example(3, 2.0)  # the turn moved SSIM by 0.055 when the truth's mean phase counted as a level
def test_truth_and_recon_turned_alike_score_the_same(seed, turn):
    """The far field cannot see a global phase, so no score may (a truth across +-pi, split into
    values 2 pi apart, scored SSIM 0.97 instead of 0.07)."""
    truth = grid_lines_truth(seed).astype(np.complex128)
    rng = np.random.default_rng(seed)
    recon = truth * np.exp(1j * 0.3 * rng.standard_normal(truth.shape)) * (1 + 0.1 * rng.standard_normal(truth.shape))
    plain = score(recon, truth)["phase"]
    turned = score(recon * np.exp(1j * turn), truth * np.exp(1j * turn))["phase"]
    for name in METRICS:
        assert turned[name] == pytest.approx(plain[name], rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("turn", [0.0, 1.0, 2.5, -3.0])
def test_a_zero_pi_grating_whose_two_gaps_tie_scores_the_same_at_every_turn(turn):
    """Two gaps of pi: the cut was taken by rounding, flipping the image (SSIM 0.45 or 0.80, FRC50
    0.05 or 0.2 for the same recon); now the cut leaving the smaller mean, which no turn changes."""
    rng = np.random.default_rng(1)
    lines = np.zeros((40, 40), bool)
    lines[:, ::9] = True
    truth = np.exp(1j * np.where(lines, np.pi, 0.0))
    recon = np.exp(1j * (np.where(lines, 0.4 * np.pi, 0.0) + rng.normal(0, 0.4, (40, 40))))
    plain = score(recon.astype(np.complex64), truth.astype(np.complex64))["phase"]
    turned = score((recon * np.exp(1j * turn)).astype(np.complex64), (truth * np.exp(1j * turn)).astype(np.complex64))
    for name in METRICS:
        assert turned["phase"][name] == pytest.approx(plain[name], rel=1e-6), name


@given(st.lists(st.floats(-np.pi, np.pi), min_size=2, max_size=40), st.floats(-np.pi, np.pi))
def test_the_phase_image_has_its_cut_in_the_widest_gap_and_starts_at_zero(values, turn):
    phase = np.array(values)
    image = phase_image(phase)
    np.testing.assert_allclose(np.exp(1j * image), np.exp(1j * (phase - phase[np.argmin(image)])), atol=1e-12)
    assert image.min() == 0
    ordered = np.sort(np.mod(phase, 2 * np.pi))
    widest = max(np.max(np.diff(ordered), initial=0.0), ordered[0] + 2 * np.pi - ordered[-1])
    assert np.ptp(image) == pytest.approx(2 * np.pi - widest, abs=1e-9)  # spans the circle minus its widest gap
    turned = phase_image(wrap(phase + turn))
    assert np.ptp(turned) == pytest.approx(np.ptp(image), abs=1e-9)


@SCORING
@given(seeds, phase_planes)
def test_alignment_keeps_structure_that_is_not_a_plane(seed, plane):
    """A check of the check: a phase bump on top of the plane is still scored as an error."""
    truth = grid_lines_truth(seed).astype(np.complex128)
    offset, row_slope, col_slope = plane
    rows, cols = np.indices(truth.shape)
    bump = 0.5 * np.exp(-((rows - 16) ** 2 + (cols - 16) ** 2) / 20)  # (SIDE, SIDE) rad
    recon = truth * np.exp(1j * (offset + row_slope * rows + col_slope * cols + bump))
    assert score(recon, truth)["phase"]["mae"] > 0.01


@SCORING
@given(seeds)
def test_aligned_phase_errors_go_the_short_way_round(seed):
    """Whatever the recon phase, each aligned error is at most pi (MAE of a phase is at most pi)."""
    truth = grid_lines_truth(seed)
    recon_phase = np.random.default_rng(seed).uniform(-np.pi, np.pi, truth.shape)
    aligned = align_phase(recon_phase, np.angle(truth))
    assert np.abs(aligned - np.angle(truth)).max() <= np.pi + 1e-12
    assert score(np.abs(truth) * np.exp(1j * recon_phase), truth)["phase"]["mae"] <= np.pi


@SCORING
@given(seeds, amplitude_scales)
def test_mean_ratio_amplitude_scale_is_removed_exactly(seed, scale):
    truth = grid_lines_truth(seed).astype(np.complex128)
    np.testing.assert_allclose(align_amplitude(np.abs(scale * truth), np.abs(truth)), np.abs(truth),
                               rtol=1e-12, atol=0)
    amplitude = score(scale * truth, truth)["amplitude"]
    assert amplitude["mae"] < 1e-12 and amplitude["psnr"] == PSNR_CAP_DB
    assert amplitude["ssim"] == pytest.approx(1.0, abs=1e-6) and amplitude["frc50"] == 0.5


# --- FRC50 against an independent reference ----------------------------------------------------

def reference_frc50(a: np.ndarray, b: np.ndarray) -> float:
    """FRC50 of square images by an explicit loop over integer frequencies (ky, kx), unshifted FFT.

    Ring k holds the frequencies with round(sqrt(ky^2 + kx^2)) == k (no ties: k + 1/2 is never a
    root of an integer); a ring with no power in either image agrees, with power in one only it does not.
    """
    side = a.shape[0]
    half = side // 2
    fa, fb = np.fft.fft2(a.astype(np.complex128)), np.fft.fft2(b.astype(np.complex128))
    cross, power_a, power_b = [0.0] * (half + 1), [0.0] * (half + 1), [0.0] * (half + 1)
    for ky in range(-half, side - half):
        for kx in range(-half, side - half):
            k = round(math.sqrt(ky * ky + kx * kx))
            if 1 <= k <= half:
                u, v = complex(fa[ky % side, kx % side]), complex(fb[ky % side, kx % side])
                cross[k] += (u * v.conjugate()).real
                power_a[k] += abs(u) ** 2
                power_b[k] += abs(v) ** 2
    for k in range(1, half + 1):
        if power_a[k] == power_b[k] == 0:
            continue
        if power_a[k] * power_b[k] == 0 or cross[k] / math.sqrt(power_a[k] * power_b[k]) < 0.5:
            return k / side
    return 0.5


@SCORING
@given(seeds, image_sides, st.floats(0.0, 3.0))
def test_frc50_matches_an_independent_ring_sum_for_an_image_and_a_noisy_copy(seed, side, noise_level):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((side, side))
    noisy = image + noise_level * rng.standard_normal((side, side))
    assert frc50(image, noisy) == reference_frc50(image, noisy)


@given(seeds, st.floats(1e-12, 1e12))
@example(0, 1e-12)  # tiny images: an absolute epsilon in the FRC denominator made every ring fail
def test_frc50_of_an_image_with_itself_is_nyquist_at_any_scale(seed, scale):
    image = scale * np.abs(grid_lines_truth(seed))
    assert frc50(image, image.copy()) == 0.5


@pytest.mark.parametrize("side", [16, 32])
def test_frc50_of_an_image_with_itself_is_nyquist_even_with_empty_rings(side):
    """A pure low-frequency cosine has power in ring 1 only; identical images agree in every ring."""
    rows, _ = np.indices((side, side))
    image = np.cos(2 * np.pi * rows / side)
    assert frc50(image, image) == 0.5 == reference_frc50(image, image)


@given(seeds)
def test_frc50_of_anticorrelated_or_spectrally_disjoint_images_falls_at_the_first_ring(seed):
    image = np.abs(grid_lines_truth(seed))
    assert frc50(image, -image) == 1 / SIDE
    rows, cols = np.indices((SIDE, SIDE))
    across, down = np.cos(2 * np.pi * cols / SIDE), np.cos(2 * np.pi * rows / SIDE)  # disjoint spectra
    assert frc50(across, down) == 1 / SIDE == reference_frc50(across, down)


@given(seeds, st.floats(1e-12, 1e12))
def test_frc50_is_scale_free(seed, scale):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((SIDE, SIDE))
    noisy = image + rng.standard_normal((SIDE, SIDE))
    assert frc50(scale * image, scale * noisy) == frc50(image, noisy)


# --- undefined scores are null, with a reason ---------------------------------------------------

def scores_with_one_pixel(seed: int, pixel: tuple[int, int], value: complex) -> dict:
    """The scores of the true object with one pixel set to ``value``."""
    truth = grid_lines_truth(seed)
    recon = truth.astype(np.complex128)
    recon[pixel] = value
    return score(recon, truth)


NONFINITE_VALUES = {"nan": complex(np.nan, 0), "inf": complex(np.inf, 0), "minus_inf": complex(-np.inf, 0),
                    "nan_imaginary": complex(0, np.nan), "inf_imaginary": complex(1, np.inf)}


@pytest.mark.parametrize("bad", list(NONFINITE_VALUES.values()), ids=list(NONFINITE_VALUES))
@SCORING
@given(seed=seeds, pixel=st.tuples(st.integers(0, SIDE - 1), st.integers(0, SIDE - 1)))
def test_a_non_finite_reconstruction_scores_null_in_every_metric_with_the_reason(bad, seed, pixel):
    scores = scores_with_one_pixel(seed, pixel, bad)
    assert all_values(scores) == [None] * 8
    assert scores["amplitude"]["reason"] == scores["phase"]["reason"] == NONFINITE


@pytest.mark.parametrize("good", [0.0, 1e6, -1.0 + 1e-30j], ids=["zero", "huge", "negative"])
@SCORING
@given(seed=seeds, pixel=st.tuples(st.integers(0, SIDE - 1), st.integers(0, SIDE - 1)))
def test_a_finite_reconstruction_with_an_odd_pixel_is_not_nulled(good, seed, pixel):
    """The control for the rule above: only non-finite values null the scores."""
    scores = scores_with_one_pixel(seed, pixel, good)
    assert all(v is not None and math.isfinite(v) for v in all_values(scores))
    assert "reason" not in scores["amplitude"] and "reason" not in scores["phase"]


@SCORING
@given(seeds, st.integers(0, 2))
def test_mean_over_objects_is_null_with_the_reason_when_any_object_is_not_finite(seed, bad_object):
    truths = np.stack([grid_lines_truth(seed + i) for i in range(3)])  # (3, SIDE, SIDE)
    recons = truths * 0.9
    recons[bad_object, 0, 0] = np.nan
    result = score_objects(recons, truths)
    assert set(result) == {"mean", "per_object", "alignment"}
    for channel in ("amplitude", "phase"):
        assert [result["mean"][channel][name] for name in METRICS] == [None] * 4
        assert result["mean"][channel]["reason"] == NONFINITE
    finite = [o for i, o in enumerate(result["per_object"]) if i != bad_object]
    assert all(v is not None for o in finite for v in all_values(o))


@SCORING
@given(seeds)
def test_mean_over_finite_objects_is_the_mean_of_their_scores_with_no_reason(seed):
    truths = np.stack([grid_lines_truth(seed + i) for i in range(3)])  # (3, SIDE, SIDE)
    recons = truths + 0.05 * np.random.default_rng(seed).standard_normal(truths.shape)
    result = score_objects(recons, truths)
    for channel in ("amplitude", "phase"):
        assert "reason" not in result["mean"][channel]
        for name in METRICS:
            want = np.mean([o[channel][name] for o in result["per_object"]])
            assert result["mean"][channel][name] == pytest.approx(want, rel=1e-12)


@SCORING
@given(seeds)
def test_a_constant_ground_truth_phase_nulls_only_the_phase_scores(seed):
    truth = grid_lines_truth(seed, set_phi=False)  # zero phase
    scores = score(truth * np.exp(0.3j), truth)
    assert [scores["phase"][name] for name in METRICS] == [None] * 4
    assert scores["phase"]["reason"] == CONSTANT_PHASE
    assert all(scores["amplitude"][name] is not None for name in METRICS)
    mean = score_objects(truth[None], truth[None])["mean"]
    assert mean["phase"]["reason"] == CONSTANT_PHASE and mean["phase"]["ssim"] is None


@SCORING
@given(seeds)
def test_a_constant_ground_truth_amplitude_nulls_only_the_amplitude_scores(seed):
    """A flat (pure-phase) object has no amplitude range: SSIM/PSNR would divide by zero."""
    _, phase = grid_lines_amplitude_phase(SIDE, 20, np.random.default_rng(seed), set_phi=True)
    truth = as_complex(np.ones_like(phase), phase)
    recon = truth * (1 + 1e-3 * np.random.default_rng(seed).standard_normal(truth.shape))
    scores = score(recon, truth)
    assert [scores["amplitude"][name] for name in METRICS] == [None] * 4
    assert scores["amplitude"]["reason"] == CONSTANT_AMPLITUDE
    assert all(scores["phase"][name] is not None for name in METRICS)


def test_scores_are_plain_floats_that_repeat_bitwise():
    truth = grid_lines_truth(7)
    recon = truth * (1 + 0.1 * np.random.default_rng(7).standard_normal(truth.shape))
    first, second = score(recon, truth), score(recon.copy(), truth.copy())
    assert first == second
    assert all(type(v) is float for v in all_values(first))
    assert torch.get_default_dtype() == torch.float32  # scoring leaves torch's global state alone


# --- the seam ratio -------------------------------------------------------------------------------------

def test_the_seam_ratio_sees_per_crop_phase_offsets_and_nothing_else():
    from ptycho_torch.metrics import phase_seam_ratio

    rng = np.random.default_rng(3)
    truth = np.exp(1j * rng.uniform(-1, 1, (1, 32, 32))).astype(np.complex64)
    smooth_error = np.exp(1j * 0.01 * rng.normal(size=truth.shape))
    assert abs(phase_seam_ratio(truth * smooth_error, truth, 8) - 1) < 0.2  # no seams to see
    offsets = np.kron(rng.uniform(-1, 1, (4, 4)), np.ones((8, 8)))[None]  # one phase offset per 8 x 8 crop
    assert phase_seam_ratio(truth * smooth_error * np.exp(1j * offsets), truth, 8) > 5
    assert phase_seam_ratio(truth * np.nan, truth, 8) is None
    assert phase_seam_ratio(truth, truth, 32) is None  # one crop: no seam


def test_pixels_reconstructed_as_zero_have_no_phase_in_the_seam_ratio():
    """Unlit pixels (0 at gridsize 2) scored jumps of 0: with the seams dark the ratio was 0."""
    from ptycho_torch.metrics import phase_seam_ratio

    rng = np.random.default_rng(4)
    truth = np.exp(1j * rng.uniform(-1, 1, (1, 32, 32))).astype(np.complex64)
    offsets = np.kron(rng.uniform(-1, 1, (4, 4)), np.ones((8, 8)))[None]
    recon = truth * np.exp(1j * (0.01 * rng.normal(size=truth.shape) + offsets))
    seams_lit = phase_seam_ratio(recon, truth, 8)
    dark = np.zeros(32, bool)
    dark[[7, 8, 15, 16, 23, 24]] = True  # the pixels on both sides of every seam
    assert phase_seam_ratio(np.where(dark[None, :, None] | dark[None, None, :], 0, recon), truth, 8) is None
    corner = recon.copy()
    corner[:, :4, :4] = 0  # a dark corner inside one crop: its pairs are left out, the ratio barely moves
    assert phase_seam_ratio(corner, truth, 8) == pytest.approx(seams_lit, rel=0.1) and seams_lit > 5


def test_an_image_smaller_than_the_ssim_window_has_null_ssim_with_a_reason_and_the_other_scores():
    truth = np.linspace(0.2, 1.0, 8 * 8).reshape(8, 8)  # 8 px < the 11 px window
    recon = truth * np.exp(0.1j)
    amplitude = score(recon, truth.astype(np.complex128))["amplitude"]
    assert amplitude["ssim"] is None and "SSIM window" in amplitude["reason"]
    assert amplitude["mae"] == pytest.approx(0.0, abs=1e-12) and amplitude["psnr"] is not None
    big = np.linspace(0.2, 1.0, 11 * 11).reshape(11, 11)
    assert score(big.astype(np.complex128), big.astype(np.complex128))["amplitude"]["ssim"] == pytest.approx(1.0)


# --- degenerate truths and sizes -----------------------------------------------------------------

def test_a_constant_phase_near_pi_counts_as_constant_though_its_values_span_two_pi():
    amplitude = np.abs(grid_lines_truth(3))
    wobble = 1e-8 * np.random.default_rng(3).standard_normal(amplitude.shape)
    truth = amplitude * np.exp(1j * (np.pi + wobble))  # angles near +pi and -pi
    assert np.ptp(np.angle(truth)) > 6
    scores = score(truth * 0.9, truth)
    assert scores["phase"]["reason"] == CONSTANT_PHASE and scores["phase"]["ssim"] is None
    assert scores["amplitude"]["ssim"] is not None


@pytest.mark.parametrize("scale", [1e-7, 1e-20, 1e20])
def test_a_structured_amplitude_at_any_scale_is_scored_and_the_same_structure_scores_the_same(scale):
    truth = grid_lines_truth(5)
    recon = truth * (1 + 0.05 * np.random.default_rng(5).standard_normal(truth.shape))
    reference = score(recon, truth)["amplitude"]
    scaled = score((recon * scale).astype(np.complex64), (truth * scale).astype(np.complex64))["amplitude"]
    assert "reason" not in scaled
    assert scaled["ssim"] == pytest.approx(reference["ssim"], abs=1e-4)
    assert scaled["frc50"] == reference["frc50"]


def test_frc50_of_float32_images_holds_beyond_the_float32_power_range():
    rng = np.random.default_rng(9)
    a = rng.uniform(0.5, 1.0, (24, 24)).astype(np.float32)
    b = (a + 0.2 * rng.standard_normal(a.shape)).astype(np.float32)
    for scale in (1e18, 1e30):
        assert frc50((b * scale).astype(np.float32), (a * scale).astype(np.float32)) == frc50(b, a)


def test_an_image_with_fewer_than_four_fourier_rings_has_null_frc_with_a_reason():
    truth = np.linspace(0.2, 1.0, 4 * 4).reshape(4, 4).astype(np.complex128)
    amplitude = score(truth * 0.5, truth)["amplitude"]
    assert amplitude["frc50"] is None and "Fourier rings" in amplitude["reason"] and "SSIM window" in amplitude["reason"]
    assert amplitude["mae"] is not None


def test_the_seam_ratio_of_stride_1_is_undefined_without_warnings():
    import warnings

    from ptycho_torch.metrics import phase_seam_ratio

    truth = np.exp(1j * np.random.default_rng(2).uniform(-1, 1, (1, 4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert phase_seam_ratio(truth, truth, 1) is None  # every neighbour pair is a seam: nothing to compare


# --- pinned edge behaviours: empty FRC rings, zero images, the size boundaries, the cap ----------

def test_the_psnr_cap_is_the_documented_100_db():
    """README and the module docstring promise 100 dB for a perfect reconstruction, not +inf."""
    truth = grid_lines_truth(2)
    assert score(truth, truth)["amplitude"]["psnr"] == 100.0 == score(truth, truth)["phase"]["psnr"]


def test_frc50_counts_a_ring_with_power_in_one_image_only_as_disagreeing():
    textured = np.abs(grid_lines_truth(1)).astype(np.float64)
    assert frc50(np.zeros((SIDE, SIDE)), textured) == 1 / SIDE  # ring 1 already has power only in the truth
    assert frc50(textured, np.zeros((SIDE, SIDE))) == 1 / SIDE


def test_frc50_of_two_identical_constant_images_is_nyquist():
    """A constant image has power at zero frequency only: every ring is empty in both, so all agree."""
    assert frc50(np.full((16, 16), 0.7), np.full((16, 16), 0.7)) == 0.5


@pytest.mark.parametrize("side", [9, 15, 16])
def test_frc50_sees_a_disagreement_in_the_last_ring_only(side):
    """The highest ring, side // 2, is scored too (odd sides included): b is a with that ring's
    Fourier components negated, so rings below agree exactly and the last one has correlation -1."""
    a = np.random.default_rng(side).standard_normal((side, side))
    k = np.fft.fftfreq(side) * side  # integer frequencies, unshifted
    ring = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    b = np.fft.ifft2(np.fft.fft2(a) * np.where(ring == side // 2, -1, 1)).real
    assert frc50(a, b) == (side // 2) / side == reference_frc50(a, b)


def test_an_all_zero_reconstruction_scores_finite_numbers_never_nan():
    """An all-zero recon has no mean to scale by: it stays zero, so its amplitude MAE is the truth's
    mean, its PSNR that of an error equal to the truth, and its FRC fails at the first ring."""
    truth = grid_lines_truth(4).astype(np.complex128)
    scores = score(np.zeros_like(truth), truth)
    assert all(v is None or math.isfinite(v) for v in all_values(scores))
    amplitude, amp_truth = scores["amplitude"], np.abs(truth)
    np.testing.assert_array_equal(align_amplitude(np.zeros((SIDE, SIDE)), amp_truth), np.zeros((SIDE, SIDE)))
    assert amplitude["mae"] == pytest.approx(amp_truth.mean(), rel=1e-12)
    assert amplitude["psnr"] == pytest.approx(10 * math.log10(np.ptp(amp_truth) ** 2 / np.mean(amp_truth ** 2)),
                                              rel=1e-12)
    assert amplitude["frc50"] == 1 / SIDE


def test_an_all_zero_ground_truth_counts_as_constant_in_both_channels():
    """No range (amplitude 0, phase 0): both channels are null with their reasons, never an exception."""
    recon = np.exp(1j * np.random.default_rng(0).uniform(-1, 1, (SIDE, SIDE)))
    scores = score(recon, np.zeros((SIDE, SIDE), np.complex64))
    assert all_values(scores) == [None] * 8
    assert scores["amplitude"]["reason"] == CONSTANT_AMPLITUDE and scores["phase"]["reason"] == CONSTANT_PHASE


@SCORING
@given(seeds, st.floats(0.05, 1.0))
def test_a_phase_error_with_no_plane_component_is_kept_as_it_is(seed, size):
    """A checkerboard error is orthogonal to every plane and below pi: alignment leaves truth + error,
    and the phase SSIM is torchmetrics' SSIM of that pair on the phase image."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    truth = grid_lines_truth(seed).astype(np.complex128)
    error = size * checkerboard(SIDE)
    phase = phase_image(np.angle(truth))
    np.testing.assert_allclose(align_phase(phase + error, phase), phase + error, rtol=0, atol=1e-9)
    want = structural_similarity_index_measure(torch.from_numpy(phase + error)[None, None],
                                               torch.from_numpy(phase)[None, None], data_range=float(np.ptp(phase)))
    assert score(truth * np.exp(1j * error), truth)["phase"]["ssim"] == pytest.approx(float(want), abs=1e-9)


def test_an_image_exactly_frc_min_size_wide_has_an_frc50_and_a_smaller_one_says_why_not():
    """8 px gives 4 Fourier rings, the documented minimum; 7 px gives 3."""
    truth = np.linspace(0.2, 1.0, 8 * 8).reshape(8, 8).astype(np.complex128)
    assert score(truth * 0.5, truth)["amplitude"]["frc50"] == 0.5  # aligned: the same image
    small = truth[:7, :7]
    amplitude = score(small * 0.5, small)["amplitude"]
    assert amplitude["frc50"] is None and "fewer than 4 Fourier rings" in amplitude["reason"]


def test_the_seam_ratio_at_stride_2_is_the_seam_jump_over_the_inside_jump():
    """2 x 2 crops, an error ramp of 0.1 rad per column plus 0.3 rad more at each crop's left edge:
    every seam jump along a row is 0.4, every inside one 0.1; along columns nothing jumps, and seams
    and insides hold the same share of those pairs, so the ratio is 0.4 / 0.1."""
    from ptycho_torch.metrics import phase_seam_ratio

    truth = np.exp(1j * np.random.default_rng(5).uniform(-1, 1, (1, 8, 8)))
    cols = np.arange(8)
    error = np.broadcast_to(0.1 * cols + 0.3 * (cols // 2), (1, 8, 8))
    assert phase_seam_ratio(truth * np.exp(1j * error), truth, 2) == pytest.approx(4.0, rel=1e-9)
    real = np.abs(truth)  # a real truth: recon * conj(truth) is exactly real, so no error jumps anywhere
    assert phase_seam_ratio(real, real, 2) is None  # 0 / 0 is not a ratio
