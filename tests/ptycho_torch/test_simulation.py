"""Simulated splits: photon statistics, integer counts, agreement with the forward model, seeding, files."""

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from ptycho_torch.config import SimulationConfig
from ptycho_torch.npz_data import DataError, load_npz
from ptycho_torch.physics import forward_amplitude
from ptycho_torch.probe import ideal_probe, load_probe
from ptycho_torch.scan import stitch_patches
from ptycho_torch.simulation import photon_scale, simulate_dataset, simulate_split, simulate_splits
from tests.helpers import gaussian_kernel
from tests.strategies import tiny_simulation_configs

TINY = SimulationConfig(N=16, object_size=32, n_lines=20, nphotons=1e3, n_train_images=2, n_test_images=1,
                        train_stride=4, test_stride=8, data_seed=5)


def split(sim: SimulationConfig, name: str = "train", seed: int = 0, stride: int | None = None):
    stride = stride or (sim.train_stride if name == "train" else sim.test_stride)
    return simulate_split(sim, 2, stride, np.random.default_rng(seed), ideal_probe(sim.N), split=name)


def counts_of(data) -> np.ndarray:
    return (data.diffraction.astype(np.float64) * data.intensity_scale) ** 2


def test_mean_photon_count_per_pattern_is_nphotons_within_three_standard_errors():
    sim = SimulationConfig(N=16, object_size=64, n_lines=40, nphotons=1e3, data_seed=1)
    data = split(sim, stride=1)  # 2 x 49^2 = 4,802 patterns
    totals = counts_of(data).sum(axis=(1, 2))
    # noiseless totals average to nphotons exactly, so the spread of the mean is Poisson's alone
    standard_error = np.sqrt(sim.nphotons / len(totals))
    assert len(totals) == 4802
    assert abs(totals.mean() - sim.nphotons) < 3 * standard_error


def test_photon_scale_by_hand_and_patterns_without_energy_are_refused():
    """Two patterns of four pixels at amplitude 0.5: energy 1 each, so scale^2 = nphotons."""
    assert photon_scale(np.full((2, 2, 2), 0.5, np.float32), 9.0) == pytest.approx(3.0, rel=1e-12)
    with pytest.raises(ValueError, match="carry no energy"):
        photon_scale(np.zeros((3, 4, 4), np.float32), 1e3)


def test_the_progress_bar_counts_every_pattern_and_is_drawn_only_when_asked(capsys):
    simulate_splits(TINY, progress=False)
    assert capsys.readouterr().err == ""
    simulate_splits(TINY, progress=True)
    assert "59/59" in capsys.readouterr().err  # 2 train objects x 5 x 5 + 1 test object x 3 x 3


@settings(deadline=None)  # runs the forward model: timing follows the machine's load
@given(tiny_simulation_configs())
def test_counts_are_integers_before_the_square_root(sim):
    sim = dataclasses.replace(sim, nphotons=min(sim.nphotons, 1e4))  # float32 resolves counts < ~1e5
    counts = counts_of(split(sim))
    assert np.all(np.abs(counts - np.round(counts)) <= 1e-3 + 3e-7 * counts)
    assert counts.min() >= 0


def test_bright_patterns_match_the_forward_model_of_the_stored_patches():
    sim = SimulationConfig(N=16, object_size=40, n_lines=30, nphotons=1e12, set_phi=True)
    data = split(sim)
    patches = torch.from_numpy(data.Y_I * np.exp(1j * data.Y_phi).astype(np.complex64))
    clean = forward_amplitude(patches, torch.from_numpy(data.probeGuess)).numpy()
    # sqrt(Poisson(l)) deviates from sqrt(l) by ~0.5 count^(1/2) at most a few times over
    np.testing.assert_allclose(data.diffraction, clean, rtol=1e-5, atol=4 / data.intensity_scale)


def test_patches_coords_and_ground_truth_agree_with_the_objects():
    data = split(TINY, "test")
    for m in (0, len(data.coords) // 2, len(data.coords) - 1):
        (row, col), image = data.coords[m], data.image_index[m]
        window = data.objectGuess[image, row:row + 16, col:col + 16]
        np.testing.assert_allclose(data.Y_I[m], np.abs(window), rtol=1e-6)
    for image in range(2):
        mine = data.image_index == image
        patches = data.Y_I[mine] * np.exp(1j * data.Y_phi[mine])
        stitched = stitch_patches(patches, data.coords[mine], 16, TINY.test_stride)
        np.testing.assert_allclose(stitched, data.YY_ground_truth[image], rtol=1e-6, atol=1e-7)


def test_same_seed_gives_bitwise_identical_files_and_another_seed_differs():
    with tempfile.TemporaryDirectory() as folder:
        first = [load_npz(p, s) for p, s in zip(simulate_dataset(TINY, Path(folder) / "a"), ("train", "test"))]
        again = [load_npz(p, s) for p, s in zip(simulate_dataset(TINY, Path(folder) / "b"), ("train", "test"))]
        reseeded = dataclasses.replace(TINY, data_seed=6)
        other = load_npz(simulate_dataset(reseeded, Path(folder) / "c")[0], "train")
    for one, two in zip(first, again):
        for name, array in one.to_arrays().items():
            assert array.tobytes() == two.to_arrays()[name].tobytes(), name
    assert not np.array_equal(first[0].diffraction, other.diffraction)
    assert not np.array_equal(first[0].objectGuess, other.objectGuess)
    assert not np.array_equal(first[0].objectGuess[0], first[1].objectGuess[0])  # splits draw their own objects


def test_simulate_dataset_writes_both_splits_with_their_settings(tmp_path):
    train_path, test_path = simulate_dataset(TINY, tmp_path, progress=True)
    assert {p.name for p in tmp_path.iterdir()} == {"train.npz", "test.npz"}  # no temp files left behind
    train, test = load_npz(train_path, "train", expected_N=16), load_npz(test_path, "test", expected_N=16)
    assert train.diffraction.shape == (2 * 5 * 5, 16, 16) and test.diffraction.shape == (3 * 3, 16, 16)
    assert test.YY_ground_truth.shape == (1, 24, 24)
    assert train.metadata["stride"] == 4 and test.metadata["stride"] == 8
    assert train.metadata["nphotons"] == TINY.nphotons and test.metadata["split"] == "test"


def test_a_probe_file_is_used_and_a_bad_one_is_refused(tmp_path):
    probe = (np.arange(256).reshape(16, 16) * (1 + 1j)).astype(np.complex64)
    np.savez(tmp_path / "probe.npz", probeGuess=probe)
    sim = dataclasses.replace(TINY, probe_npz=tmp_path / "probe.npz")
    train_path, _ = simulate_dataset(sim, tmp_path / "out")
    assert np.array_equal(load_npz(train_path, "train").probeGuess, probe)
    np.savez(tmp_path / "small.npz", probeGuess=probe[:8, :8])
    with pytest.raises(DataError, match="probeGuess.*shape"):
        load_probe(tmp_path / "small.npz", 16)
    np.savez(tmp_path / "none.npz", other=probe)
    with pytest.raises(DataError, match="probeGuess.*missing"):
        load_probe(tmp_path / "none.npz", 16)


def test_a_double_precision_probe_that_complex64_turns_to_zero_is_refused(tmp_path):
    """Nonzero in complex128, all zero in the forward model's complex64: it crashed the simulation
    ("carry no energy") after the folder was made."""
    np.savez(tmp_path / "faint.npz", probeGuess=np.full((16, 16), 1e-50, np.complex128))
    with pytest.raises(DataError, match="probeGuess.*complex64 holds"):
        load_probe(tmp_path / "faint.npz", 16)
    np.savez(tmp_path / "dim.npz", probeGuess=np.full((16, 16), 1e-30, np.complex128))  # 1e-30 survives the cast
    assert np.all(load_probe(tmp_path / "dim.npz", 16) != 0)


@pytest.mark.parametrize("probe", [np.full((16, 16), 3e38, np.complex64), np.full((16, 16), 1e200, np.complex128),
                                   np.full((16, 16), 2e18, np.complex64)], ids=["float32-max", "beyond-float32", "sum"])
def test_a_probe_whose_intensity_float32_cannot_hold_is_refused_before_simulating(tmp_path, probe):
    np.savez(tmp_path / "loud.npz", probeGuess=probe)
    with pytest.raises(DataError, match="probeGuess.*float32 holds"):
        load_probe(tmp_path / "loud.npz", 16)
    np.savez(tmp_path / "bright.npz", probeGuess=np.full((16, 16), 1e17, np.complex64))  # 5e36 in all: usable
    assert np.all(np.isfinite(simulate_split(dataclasses.replace(TINY, probe_npz=tmp_path / "bright.npz"), 1, 8,
                                             np.random.default_rng(0), load_probe(tmp_path / "bright.npz", 16)).diffraction))


def test_ideal_probe_is_a_centred_disk_with_unit_peak():
    probe = ideal_probe(64)
    assert probe.dtype == np.complex64 and np.abs(probe).max() == pytest.approx(1.0)
    assert not probe.imag.any()
    assert np.abs(probe[0, 0]) < 1e-3 and np.allclose(probe, probe[::-1, ::-1])
    assert 0.1 < np.mean(np.abs(probe) > 0.05) < 0.3  # a disk of diameter ~N/2 covers ~pi/16 of the array


def gaussian_blur_reference(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable blur by ``gaussian_kernel(sigma)``, zero outside the image."""
    kernel = gaussian_kernel(sigma)
    rows = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 0, image)
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 1, rows)


@pytest.mark.parametrize("N, defocus", [(64, 0.0), (64, 1.0), (32, 0.5), (48, -2.0)])
def test_ideal_probe_follows_its_documented_recipe(N, defocus):
    """P = G_{N/32} * [r <= N/4] x exp(-r^2 / (2 (N/4)^2)) x exp(i pi d r^2 / (N/4)^2), peak 1, r from (N - 1) / 2."""
    offsets = np.arange(N) - (N - 1) / 2
    r = np.hypot(offsets[:, None], offsets[None, :])
    amplitude = gaussian_blur_reference((r <= N / 4).astype(float), N / 32) * np.exp(-r**2 / (2 * (N / 4) ** 2))
    want = amplitude / amplitude.max() * np.exp(1j * np.pi * defocus * r**2 / (N / 4) ** 2)
    np.testing.assert_allclose(ideal_probe(N, defocus), want, rtol=0, atol=2e-6)


def test_ideal_probe_phase_grows_with_the_square_of_the_radius_and_its_peak_is_central():
    """Defocus d: the phase is pi d at the disk edge r = N/4, a quarter of that at half the radius."""
    N, defocus = 64, 1.0
    probe = ideal_probe(N, defocus)
    centre_row = probe[N // 2]  # pixels at r = |col - 31.5|, the edge r = 16 is between cols 47 and 48
    r = np.abs(np.arange(N) - (N - 1) / 2)
    lit = r <= N / 4 + 2  # beyond, the amplitude underflows and has no phase
    phase = np.unwrap(np.angle(centre_row[lit]))
    want = np.pi * defocus * (r[lit] ** 2 - 0.25) / (N / 4) ** 2  # relative to the central pixels, r = 1/2
    np.testing.assert_allclose(phase - phase[np.argmin(r[lit])], want, atol=1e-5)
    amplitude = np.abs(probe)
    assert amplitude[N // 2 - 1: N // 2 + 1, N // 2 - 1: N // 2 + 1].min() == pytest.approx(1.0)  # the 4 central
    assert amplitude[N // 2, N // 2 + 16 + 4] < 0.02 < 0.5 < amplitude[N // 2, N // 2 + 16 - 4]  # support r ~ N/4


@pytest.mark.parametrize("defocus, twin_ambiguous", [(0.0, True), (1.0, False)])
def test_probe_defocus_decides_whether_the_twin_object_is_indistinguishable(defocus, twin_ambiguous):
    """|F(O P)| = |F(conj(O(-r)) P)| for every O exactly when P(r) = conj(P(-r)): a real symmetric probe."""
    probe = ideal_probe(32, defocus)
    assert np.allclose(np.abs(probe), np.abs(ideal_probe(32)), atol=1e-6)  # defocus is phase only
    rng = np.random.default_rng(0)
    obj = (rng.uniform(0.2, 1.0, (32, 32)) * np.exp(1j * rng.uniform(-1, 1, (32, 32)))).astype(np.complex64)
    twin = np.conj(obj[::-1, ::-1])
    amplitude = [forward_amplitude(torch.from_numpy(o)[None], torch.from_numpy(probe))[0].numpy() for o in (obj, twin)]
    assert np.allclose(amplitude[0], amplitude[1], atol=1e-5) == twin_ambiguous
