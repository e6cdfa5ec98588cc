"""Training losses: minimal with zero gradient at a perfect fit, larger away from it, the Poisson
deviance against a float64 closed form, and the phase wrap's range."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ptycho_torch.losses import PINN_LOSSES, mae_loss, poisson_loss, supervised_loss, wrap_phase
from tests.strategies import rng_seeds as seeds, batch_shapes


EPS = 1e-8  # the losses' epsilon, restated: the closed form below must not borrow the module's
ONE_PHOTON = 1e-4  # data units of a one-photon pixel at the default 1e9 photons (1 / intensity_scale)


def measured_amplitudes(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """(B, N, N) float64 amplitudes like a diffraction pattern: dark pixels, one-photon pixels, bright ones."""
    batch, side = shape
    rng = np.random.default_rng(seed)
    counts = rng.choice([0.0, 1.0, 2.0, 50.0, 1e4], size=(batch, side, side))  # photons
    counts[0, 0, 0] = 1e4  # never an all-dark batch (the losses divide by the mean amplitude)
    return np.sqrt(counts) * ONE_PHOTON


def reference_poisson(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean Poisson deviance lam - y + y log(y / lam), lam = A^2 + eps, y = a^2 + eps, over mean(a) + eps."""
    lam, y = predicted.astype(np.float64) ** 2 + EPS, measured.astype(np.float64) ** 2 + EPS
    return float(np.mean(lam - y + y * np.log(y / lam)) / (measured.mean() + EPS))


def loss_and_gradient(loss, predicted: np.ndarray, measured: np.ndarray) -> tuple[float, np.ndarray]:
    pred = torch.tensor(predicted, dtype=torch.float64, requires_grad=True)
    value = loss(pred, torch.tensor(measured, dtype=torch.float64))
    (gradient,) = torch.autograd.grad(value, pred)
    return value.item(), gradient.numpy()


def displaced(measured: np.ndarray, seed: int, size: float) -> np.ndarray:
    """Non-negative amplitudes (the physics layer's A = |F(O P)| / N is >= 0) away from ``measured``."""
    rng = np.random.default_rng(seed + 1)
    return np.abs(measured + size * measured.max() * rng.standard_normal(measured.shape))


@settings(deadline=None)
@given(seeds, batch_shapes)
def test_poisson_loss_matches_its_float64_closed_form(seed, shape):
    measured = measured_amplitudes(seed, shape)
    predicted = displaced(measured, seed, 0.3)
    value, _ = loss_and_gradient(poisson_loss, predicted, measured)
    assert value == pytest.approx(reference_poisson(predicted, measured), rel=1e-12, abs=1e-300)


def test_poisson_loss_closed_form_by_hand():
    """One bright and one dark pixel, worked out on paper: y = 4 + eps, lam = 1 + eps; y = eps, lam = 1 + eps."""
    measured, predicted = np.array([[[2.0, 0.0]]]), np.array([[[1.0, 1.0]]])
    bright = (1 + EPS) - (4 + EPS) + (4 + EPS) * math.log((4 + EPS) / (1 + EPS))
    dark = (1 + EPS) - EPS + EPS * math.log(EPS / (1 + EPS))
    value, _ = loss_and_gradient(poisson_loss, predicted, measured)
    assert value == pytest.approx((bright + dark) / 2 / (1.0 + EPS), rel=1e-12)


@pytest.mark.parametrize("name", sorted(PINN_LOSSES))
@settings(deadline=None)
@given(seed=seeds, shape=batch_shapes)
def test_pinn_loss_is_zero_with_zero_gradient_at_the_measurement(name, seed, shape):
    """Dark and one-photon pixels included: with eps on the predicted intensity only, the Poisson
    minimum sat at A^2 = a^2 - eps, and a one-photon pixel's gradient was far from zero."""
    measured = measured_amplitudes(seed, shape)
    value, gradient = loss_and_gradient(PINN_LOSSES[name], measured.copy(), measured)
    assert value == 0.0
    assert np.abs(gradient).max() <= 1e-12 * measured.max()


@pytest.mark.parametrize("name", sorted(PINN_LOSSES))
@settings(deadline=None)
@given(seed=seeds, shape=batch_shapes, size=st.floats(1e-2, 1.0))
def test_pinn_loss_is_larger_with_a_nonzero_gradient_away_from_the_measurement(name, seed, shape, size):
    """The control for the test above: a displaced prediction is not a minimum."""
    measured = measured_amplitudes(seed, shape)
    predicted = displaced(measured, seed, size)
    value, gradient = loss_and_gradient(PINN_LOSSES[name], predicted, measured)
    assert value > 0.0 and np.abs(gradient).max() > 0.0


def test_poisson_loss_is_smallest_at_the_measurement_even_for_a_one_photon_pixel():
    """A scan of one one-photon pixel: the minimum is at A = a itself (it was at A = 0 before eps went on y too)."""
    measured = np.full((1, 1, 1), ONE_PHOTON)
    candidates = ONE_PHOTON * np.linspace(0.0, 2.0, 201)  # step 1% of a
    values = [loss_and_gradient(poisson_loss, np.full((1, 1, 1), c), measured)[0] for c in candidates]
    assert candidates[int(np.argmin(values))] == pytest.approx(ONE_PHOTON, rel=1e-12)


def test_mae_loss_is_the_mean_absolute_error_over_the_mean_amplitude():
    measured, predicted = np.array([[[1.0, 3.0]]]), np.array([[[2.0, 1.0]]])
    value, _ = loss_and_gradient(mae_loss, predicted, measured)
    assert value == pytest.approx((1.0 + 2.0) / 2 / (2.0 + EPS), rel=1e-12)


# --- supervised -----------------------------------------------------------------------------------

def random_object(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    batch, side = shape
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.1, 1.0, (batch, side, side)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (batch, side, side)))
    return torch.tensor(values, dtype=torch.complex128)


@settings(deadline=None)
@given(seeds, batch_shapes)
def test_supervised_loss_is_zero_with_zero_gradient_at_the_ground_truth(seed, shape):
    """The ground truth is the prediction's own polar form, so the residuals are exactly zero."""
    obj = random_object(seed, shape).requires_grad_(True)
    amplitude, phase = obj.detach().abs(), obj.detach().angle()
    value = supervised_loss(obj, amplitude, phase)
    (gradient,) = torch.autograd.grad(value, obj)
    assert value.item() == 0.0 and gradient.abs().max().item() == 0.0


@settings(deadline=None)
@given(seeds, batch_shapes, st.integers(-3, 3))
def test_supervised_loss_is_zero_for_a_truth_given_as_amplitude_and_any_equivalent_phase(seed, shape, turns):
    """obj = amplitude * exp(i phase) with the phase off by whole turns: zero up to rounding."""
    rng = np.random.default_rng(seed)
    amplitude = torch.tensor(rng.uniform(0.1, 1.0, (shape[0], shape[1], shape[1])))
    phase = torch.tensor(rng.uniform(-np.pi, np.pi, (shape[0], shape[1], shape[1])))
    obj = amplitude * torch.exp(1j * phase)
    assert supervised_loss(obj, amplitude, phase + 2 * np.pi * turns).item() < 1e-12


@settings(deadline=None)
@given(seeds, batch_shapes, st.floats(1e-3, 1.0))
def test_supervised_loss_is_larger_away_from_the_ground_truth(seed, shape, size):
    truth = random_object(seed, shape)
    noise = random_object(seed + 1, shape)
    obj = (truth + size * noise).requires_grad_(True)
    value = supervised_loss(obj, truth.abs(), truth.angle())
    (gradient,) = torch.autograd.grad(value, obj)
    assert value.item() > 0.0 and gradient.abs().max().item() > 0.0


# --- wrap_phase -----------------------------------------------------------------------------------

@given(st.floats(-1e3, 1e3))
@example(math.nextafter(-math.pi, -math.inf))  # remainder rounded this to 2 pi, so it wrapped to +pi
@example(-math.pi)
@example(math.pi)
@example(3 * math.pi)
def test_wrap_phase_maps_into_minus_pi_to_pi_by_whole_turns(phase):
    wrapped = wrap_phase(torch.tensor([phase], dtype=torch.float64)).item()
    assert -math.pi <= wrapped < math.pi
    turns = (phase - wrapped) / (2 * math.pi)
    assert turns == pytest.approx(round(turns), abs=1e-9)


@given(st.floats(-1e3, 1e3, width=32))
@example(float(np.nextafter(np.float32(-np.pi), np.float32(-4))))
def test_wrap_phase_maps_float32_into_its_own_minus_pi_to_pi(phase):
    pi32 = float(np.float32(math.pi))  # float32 pi is a little above pi
    wrapped = wrap_phase(torch.tensor([phase], dtype=torch.float32)).item()
    assert -pi32 <= wrapped < pi32


@given(st.floats(-math.pi, math.pi, exclude_max=True))
@example(math.nextafter(math.pi, 0.0))  # rounds onto the boundary: -pi, the same angle
def test_wrap_phase_leaves_a_phase_in_range_at_the_same_angle(phase):
    wrapped = wrap_phase(torch.tensor([phase], dtype=torch.float64)).item()
    assert abs(math.remainder(wrapped - phase, 2 * math.pi)) <= 1e-15
