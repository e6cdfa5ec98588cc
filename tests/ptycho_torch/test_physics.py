"""The forward model A = fftshift(|FFT2(O P)|) / N against numpy, Parseval, autograd, and the probe mask."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptycho_torch.physics import apply_probe_mask, far_field_amplitude, forward_amplitude, illuminate, probe_disk_mask
from tests.strategies import complex_batches, finite


def numpy_forward(obj: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """Independent reference: explicit numpy FFT, shift and 1/N."""
    side = obj.shape[-1]
    return np.fft.fftshift(np.abs(np.fft.fft2(obj * probe)), axes=(-2, -1)) / side


def tolerance(dtype) -> float:
    return 1e-5 if dtype == np.complex64 else 1e-12


@settings(deadline=None)  # the first FFT call pays torch's one-off setup
@given(complex_batches())
def test_forward_amplitude_matches_numpy_reference(fields):
    obj, probe = fields
    got = forward_amplitude(torch.from_numpy(obj), torch.from_numpy(probe)).numpy()
    want = numpy_forward(obj.astype(np.complex128), probe.astype(np.complex128))
    np.testing.assert_allclose(got, want, rtol=tolerance(obj.dtype), atol=tolerance(obj.dtype) * want.max())


@settings(deadline=None)  # the first FFT call pays torch's one-off setup
@given(complex_batches())
def test_far_field_conserves_energy_parseval(fields):
    obj, probe = fields
    psi = illuminate(torch.from_numpy(obj), torch.from_numpy(probe))
    amplitude = far_field_amplitude(psi)
    energy_in = psi.abs().square().sum(dim=(-2, -1)).double()
    energy_out = amplitude.square().sum(dim=(-2, -1)).double()
    torch.testing.assert_close(energy_out, energy_in, rtol=10 * tolerance(obj.dtype), atol=0.0)


def test_zero_frequency_lands_on_the_centre_pixel():
    side = 8
    flat = torch.ones(1, side, side, dtype=torch.complex64)
    amplitude = forward_amplitude(flat, torch.ones(side, side, dtype=torch.complex64))
    assert amplitude[0, side // 2, side // 2] == pytest.approx(side)  # all energy N^2 in one pixel: A = N
    assert amplitude.sum() == pytest.approx(side)


def test_forward_amplitude_is_differentiable_gradcheck():
    rng = np.random.default_rng(0)
    obj = torch.tensor(rng.standard_normal((2, 5, 5)) + 1j * rng.standard_normal((2, 5, 5)), requires_grad=True)
    probe = torch.tensor(rng.standard_normal((5, 5)) + 1j * rng.standard_normal((5, 5)))
    assert torch.autograd.gradcheck(lambda o: forward_amplitude(o, probe), (obj,))


def test_fitting_an_object_through_the_forward_model_lowers_the_loss():
    torch.manual_seed(0)
    probe = torch.ones(8, 8, dtype=torch.complex64)
    target = forward_amplitude(torch.randn(1, 8, 8, dtype=torch.complex64), probe)
    guess = torch.randn(1, 8, 8, dtype=torch.complex64, requires_grad=True)
    optimizer = torch.optim.Adam([guess], lr=0.1)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = (forward_amplitude(guess, probe) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


@given(st.integers(1, 64), finite(0.0, 64.0, exclude_min=True))
@example(side=64, diameter=32.0)
@example(side=7, diameter=7.0)
def test_probe_disk_mask_has_the_area_of_its_diameter(side, diameter):
    diameter = min(diameter, float(side))
    mask = probe_disk_mask(side, diameter)
    assert mask.shape == (side, side) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # pixel-counted area differs from pi d^2 / 4 by at most the pixels the rim crosses
    assert abs(mask.sum().item() - math.pi * diameter**2 / 4) <= math.pi * diameter + 2
    assert torch.equal(mask, mask.flip(0)) and torch.equal(mask, mask.flip(1)) and torch.equal(mask, mask.T)


@given(st.integers(1, 64))
def test_probe_disk_mask_none_means_diameter_N(side):
    mask = probe_disk_mask(side, None)
    assert torch.equal(mask, probe_disk_mask(side, float(side)))
    assert mask[side // 2].all() and mask[:, side // 2].all()  # the inscribed disk spans the array
    assert mask[0, 0] == (side < 4)  # corners lie outside once (N - 1) sqrt(2) / 2 > N / 2


def test_apply_probe_mask_zeroes_outside_the_disk_and_keeps_dtype():
    probe = torch.full((16, 16), 2 + 1j, dtype=torch.complex64)
    masked = apply_probe_mask(probe, 8.0)
    assert masked.dtype == torch.complex64
    inside = probe_disk_mask(16, 8.0).bool()
    assert torch.all(masked[inside] == probe[inside]) and torch.all(masked[~inside] == 0)


@pytest.mark.parametrize("side, diameter", [(5, 4.0), (7, 6.0), (9, 4.0), (8, 5.0)])
def test_probe_disk_mask_includes_pixels_exactly_on_the_rim(side, diameter):
    """A pixel "within diameter / 2" of the centre includes the rim: with an odd side and an even diameter, the pixels
    diameter / 2 straight out from the centre lie exactly on it. Exact integer arithmetic decides:
    (2i - (N - 1))^2 + (2j - (N - 1))^2 <= diameter^2."""
    twice = 2 * np.arange(side) - (side - 1)  # twice each pixel's offset from the centre
    want = (twice[:, None] ** 2 + twice[None, :] ** 2 <= int(diameter) ** 2).astype(np.float32)
    assert np.array_equal(probe_disk_mask(side, diameter).numpy(), want)
