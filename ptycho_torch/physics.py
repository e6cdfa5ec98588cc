"""The physics forward model, shared by the simulation and the training model.

A probe P illuminates an object patch O; the exit wave propagates to the far field, where the
detector records its magnitude (PtychoPINN: Hoidn, Mishra & Mehta, Sci. Rep. 2023):

    psi = O * P                                   (exit wave)
    A   = fftshift(|FFT2(psi)|) / N               (measured amplitude)

The 1/N makes the transform unitary ("ortho"), so sum |A|^2 == sum |psi|^2 (Parseval): the
photon budget of a pattern is the energy of its exit wave. Everything here works on batched
torch tensors of any device and complex dtype, and is differentiable, so the training model
can put the same functions behind its generator.
"""

from __future__ import annotations

import torch

SPATIAL_DIMS = (-2, -1)


def illuminate(obj: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Exit wave psi = O * P; obj (..., N, N) complex, probe (N, N) complex, broadcast over the batch."""
    return obj * probe  # (B, N, N) complex


def far_field_amplitude(psi: torch.Tensor) -> torch.Tensor:
    """A = fftshift(|FFT2(psi)|) / N, zero frequency at pixel (N//2, N//2)."""
    field = torch.fft.fft2(psi, norm="ortho")  # (B, N, N) complex, unitary: /N
    return torch.fft.fftshift(field.abs(), dim=SPATIAL_DIMS)  # (B, N, N) real


def forward_amplitude(obj: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Far-field amplitude of object patches lit by the probe: (B, N, N) complex -> (B, N, N) real."""
    return far_field_amplitude(illuminate(obj, probe))


def probe_disk_mask(N: int, diameter: float | None = None, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A centred disk of ones, (N, N); diameter in pixels, None = N (the inscribed disk).

    The centre is the geometric centre of the array, (N - 1) / 2, so the mask is symmetric
    under flips; a pixel is inside when its centre lies within diameter / 2 of it.
    """
    diameter = float(N) if diameter is None else float(diameter)
    offsets = torch.arange(N, device=device, dtype=torch.float64) - (N - 1) / 2  # (N,)
    radius = torch.hypot(offsets[:, None], offsets[None, :])  # (N, N)
    return (radius <= diameter / 2).to(dtype)


def apply_probe_mask(probe: torch.Tensor, diameter: float | None = None) -> torch.Tensor:
    """The probe multiplied by a centred disk mask: the one place the mask is applied."""
    N = probe.shape[-1]
    mask = probe_disk_mask(N, diameter, device=probe.device, dtype=probe.real.dtype)  # (N, N) real
    return probe * mask  # (N, N) complex
