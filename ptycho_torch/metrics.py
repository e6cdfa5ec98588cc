"""Scoring a stitched reconstruction against the ground-truth object (amplitude and phase).

Alignment before scoring (a PINN recovers the object only up to these ambiguities):
  amplitude: the reconstruction is multiplied by mean(gt) / mean(recon) (the mean-ratio scale);
  phase:     the least-squares plane a + b*row + c*col of the wrapped difference recon - gt is
             removed (a constant offset and a linear ramp are invisible in far-field amplitudes).
Metrics: MAE; PSNR and SSIM from torchmetrics with data_range = the ground truth's value range;
FRC50 = the spatial frequency (cycles/pixel, 0..0.5) where the Fourier ring correlation first
falls below 0.5 (0.5 = never, up to Nyquist). Higher is better except for MAE.
A constant ground-truth phase has no range: its phase metrics are null, with the reason.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

ALIGNMENT = {
    "amplitude": "recon amplitude scaled by mean(gt) / mean(recon)",
    "phase": "least-squares plane (offset + linear ramp) of the wrapped phase difference removed",
    "data_range": "max(gt) - min(gt) of the compared channel",
    "frc50": "cycles/pixel where the Fourier ring correlation first drops below 0.5 (0.5 = Nyquist)",
}
METRICS = ("mae", "psnr", "ssim", "frc50")
CONSTANT_PHASE = "ground-truth phase is constant (no range), so phase PSNR/SSIM/FRC are undefined"


def wrap(phase: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * phase))


def align_amplitude(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return recon * (truth.mean() / max(float(recon.mean()), 1e-12))


def align_phase(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Recon phase minus the best-fit plane of its wrapped difference from the truth, wrapped."""
    diff = wrap(recon - truth)
    offset = np.angle(np.exp(1j * diff).mean())  # robust constant first, so the plane fit sees no wraps
    diff = wrap(diff - offset)
    rows, cols = np.indices(truth.shape)  # (H, W) each
    design = np.stack([np.ones(truth.size), rows.ravel(), cols.ravel()], axis=1)  # (H*W, 3)
    coef, *_ = np.linalg.lstsq(design, diff.ravel(), rcond=None)
    return wrap(recon - offset - (design @ coef).reshape(truth.shape))


def frc50(a: np.ndarray, b: np.ndarray) -> float:
    """Spatial frequency (cycles/pixel) where the Fourier ring correlation of a and b drops below 0.5."""
    fa, fb = np.fft.fftshift(np.fft.fft2(a)), np.fft.fftshift(np.fft.fft2(b))  # (H, W) complex
    h, w = a.shape
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)), indexing="ij")
    ring = np.rint(np.hypot(fy, fx) * min(h, w)).astype(int)  # ring index, 1 ring = 1/min(h, w) cycles/px
    n_rings = min(h, w) // 2
    cross = np.bincount(ring.ravel(), (fa * fb.conj()).real.ravel(), minlength=n_rings + 1)
    power_a = np.bincount(ring.ravel(), (np.abs(fa) ** 2).ravel(), minlength=n_rings + 1)
    power_b = np.bincount(ring.ravel(), (np.abs(fb) ** 2).ravel(), minlength=n_rings + 1)
    frc = cross[1:n_rings + 1] / np.sqrt(power_a[1:n_rings + 1] * power_b[1:n_rings + 1] + 1e-30)
    below = np.nonzero(frc < 0.5)[0]
    return float((below[0] + 1) / min(h, w)) if below.size else 0.5


def _image_metrics(recon: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    data_range = float(truth.max() - truth.min())
    p = torch.from_numpy(recon.astype(np.float32))[None, None]  # (1, 1, H, W)
    t = torch.from_numpy(truth.astype(np.float32))[None, None]
    return {
        "mae": float(np.abs(recon - truth).mean()),
        "psnr": float(peak_signal_noise_ratio(p, t, data_range=data_range)),
        "ssim": float(structural_similarity_index_measure(p, t, data_range=data_range)),
        "frc50": frc50(recon, truth),
    }


def score(recon: np.ndarray, truth: np.ndarray) -> dict:
    """Metrics of one complex object (H, W) against its complex ground truth (H, W)."""
    amp_truth, phase_truth = np.abs(truth), np.angle(truth)
    result = {"amplitude": _image_metrics(align_amplitude(np.abs(recon), amp_truth), amp_truth)}
    if np.ptp(phase_truth) < 1e-6:
        result["phase"] = {"mae": None, "psnr": None, "ssim": None, "frc50": None, "reason": CONSTANT_PHASE}
    else:
        result["phase"] = _image_metrics(align_phase(np.angle(recon), phase_truth), phase_truth)
    return result


def score_objects(recons: np.ndarray, truths: np.ndarray) -> dict:
    """Per-object metrics and their mean over objects (null stays null)."""
    per_object = [score(r, t) for r, t in zip(recons, truths)]
    mean = {channel: {name: _mean([o[channel][name] for o in per_object]) for name in METRICS}
            for channel in ("amplitude", "phase")}
    reasons = {o["phase"]["reason"] for o in per_object if "reason" in o["phase"]}
    if reasons:
        mean["phase"]["reason"] = CONSTANT_PHASE
    return {"mean": mean, "per_object": per_object, "alignment": ALIGNMENT}


def _mean(values: list[float | None]) -> float | None:
    """Mean over objects; null if any object has no value; inf (a perfect PSNR) is kept out of JSON as null."""
    if any(v is None for v in values):
        return None
    value = float(np.mean(values))
    return value if math.isfinite(value) else None
