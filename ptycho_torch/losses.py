"""Training losses, each dimensionless so that one learning rate suits every dataset.

PINN losses compare the far-field amplitude predicted by the physics layer, A = |F(O P)| / N,
with the measured amplitude a (data units; counts = (a * scale)^2):
  poisson: Poisson negative log-likelihood of the predicted intensity lam = A^2 given the measured
           intensity y = a^2, written as the deviance lam - y + y log(y / lam) (zero at a perfect fit;
           the count scale only multiplies it), divided by the batch's mean measured amplitude.
           Both intensities carry the same eps = 1e-8, which keeps the log finite at dark pixels;
           adding it to lam alone would move the minimum to A^2 = a^2 - eps, and at the default
           1e9 photons eps is 0.3 to 1.3 photons (N = 64 to 16), so one-photon pixels would be
           pulled towards zero.
  mae:     mean |A - a|, divided by the batch's mean measured amplitude.
Supervised: mean |amp - Y_I| + mean |wrap(phase - Y_phi)|, against the ground-truth patches.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-8


def poisson_loss(predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    lam, y = predicted.square() + _EPS, measured.square() + _EPS  # (B, N, N) intensities, both > 0
    deviance = lam - y + y * torch.log(y / lam)
    return deviance.mean() / (measured.mean() + _EPS)


def mae_loss(predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    return (predicted - measured).abs().mean() / (measured.mean() + _EPS)


PINN_LOSSES = {"poisson": poisson_loss, "mae": mae_loss}


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """Phase difference mapped into [-pi, pi)."""
    wrapped = torch.remainder(phase + math.pi, 2 * math.pi) - math.pi
    # remainder rounds to 2 pi itself for phases just below -pi (an odd multiple); that is -pi
    return torch.where(wrapped >= math.pi, wrapped - 2 * math.pi, wrapped)


def supervised_loss(obj: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    return (obj.abs() - amplitude).abs().mean() + wrap_phase(obj.angle() - phase).abs().mean()
