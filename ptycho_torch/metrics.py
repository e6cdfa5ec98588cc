"""Scoring a stitched reconstruction against the ground-truth object (amplitude and phase).

Alignment before scoring (a PINN recovers the object only up to these ambiguities):
  amplitude: the reconstruction is multiplied by mean(gt) / mean(recon) (the mean-ratio scale);
  phase:     the least-squares plane a + b*row + c*col of the wrapped difference recon - gt is
             removed (a constant offset and a linear ramp are invisible in far-field amplitudes),
             and the result is gt + wrap(recon - gt - plane): the representative of the recon
             phase nearest the truth, so every phase error is the short way round (at most pi).
             The truth's phase is taken with its branch cut in the widest gap between its values and
             its smallest value as the origin (``phase_image``): no phase score depends on the
             truth's global phase, which the far field cannot see.
             Exact for any offset and a ramp with |b| H + |c| W < 2 pi on an (H, W) image; a
             steeper ramp is partly left in the error.
Metrics, in float64, with data_range = the ground truth's value range: MAE; PSNR =
10 log10(data_range^2 / MSE); SSIM from torchmetrics (Gaussian window, its defaults);
FRC50 = the spatial frequency (cycles/pixel, 0..0.5) of the first Fourier ring whose correlation
is below 0.5 (0.5: none before the Nyquist ring, 0.5 cycles/pixel, which may itself be below or
not). Higher is better except for MAE.
PSNR is capped at PSNR_CAP_DB = 100 dB (an RMS error of 1e-5 of the data range): a perfect
reconstruction (MSE 0) scores exactly the cap instead of +inf, which strict JSON cannot hold and
which would otherwise be indistinguishable from "undefined" (null).
Null (None) means undefined, always with a reason: a reconstruction with any NaN or inf scores
null for every metric of both channels; a constant ground-truth channel (no range) scores null
for that channel (amplitude: a range below 1e-6 of its largest value; phase: every value within
1e-6 rad of the circular mean); an image too small for SSIM's window or for 4 Fourier rings scores
those null. A mean over objects is null if any object's value is null.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

PSNR_CAP_DB = 100.0  # dB; PSNR of a reconstruction equal to the truth (MSE 0 would give +inf)
ALIGNMENT = {
    "amplitude": "recon amplitude scaled by mean(gt) / mean(recon)",
    "phase": "least-squares plane (offset + linear ramp) of the wrapped phase difference removed; "
             "aligned phase = gt + wrapped residual (errors at most pi); gt phase taken with its 2 pi branch "
             "cut in the widest gap between its values and its smallest value as 0",
    "data_range": "max(gt) - min(gt) of the compared channel",
    "psnr": f"capped at {PSNR_CAP_DB:g} dB (the score of a perfect reconstruction, MSE 0)",
    "frc50": "cycles/pixel of the first Fourier ring whose correlation is below 0.5 (0.5: none before the Nyquist ring)",
    "null": "undefined: the reason is given beside the metrics",
}
CHANNELS = ("amplitude", "phase")
METRICS = ("mae", "psnr", "ssim", "frc50")
NONFINITE = "reconstruction is not finite (NaN or inf), so no metric is defined"
SSIM_WINDOW = 11  # torchmetrics' default Gaussian window, in pixels
CONSTANT_AMPLITUDE = "ground-truth amplitude is constant (no range), so amplitude PSNR/SSIM/FRC are undefined"
CONSTANT_PHASE = "ground-truth phase is constant (no range), so phase PSNR/SSIM/FRC are undefined"
CONSTANT_RANGE = 1e-6  # a ground-truth channel whose relative range (amplitude) or circular spread (phase,
# radians) is smaller counts as constant
FRC_MIN_SIZE = 8  # pixels: a smaller scored image has fewer than 4 Fourier rings, which tell nothing
SMALL_FOR_FRC = "the scored image ({h}x{w} px) has fewer than {rings} Fourier rings, so FRC50 is undefined"


def wrap(phase: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * phase))


def phase_image(phase: np.ndarray) -> np.ndarray:
    """The truth's phase as the image its phase scores compare (float64): the 2 pi branch cut moved
    into the widest gap between its values, then shifted so that its smallest value is 0.

    The far field cannot see a global phase, so no score may: taken as np.angle gives it, a truth
    across +-pi was split into values 2 pi apart (a recon scored phase SSIM 0.07 against a truth and
    0.97 against the same truth turned by 3 rad; its PSNR and FRC were wrong with it), and SSIM's
    brightness term read the truth's mean phase as a level (0.26 against 0.32 for a turn of 2 rad).
    With the cut in the widest gap and the origin at the smallest value, truth and recon turned alike
    score the same. Gaps within ``TIED_GAP`` of the widest tie (a 0 / pi grating has two gaps of pi):
    of those, the cut that leaves the image its smallest mean is taken, which no turn changes. A
    truth whose phase does not cross +-pi keeps its MAE, PSNR and FRC (the shift is a constant:
    FRC leaves the zero frequency out), to float64 rounding."""
    return phase.astype(np.float64) + phase_shift(phase)


TIED_GAP = 1e-6  # radians: gaps between phase values closer than this to the widest one tie


def phase_shift(phase: np.ndarray) -> np.ndarray:
    """What ``phase_image`` adds to each value (whole turns and the origin's shift), float64, to be
    added to the recon's phase alike."""
    values = np.sort(phase.astype(np.float64), axis=None)
    if values.size < 2:
        return -values.min(initial=0.0) * np.ones(phase.shape)
    gaps = np.append(np.diff(values), values[0] + 2 * np.pi - values[-1])  # the last: across +-pi
    best = None
    for cut in np.flatnonzero(gaps >= gaps.max() - TIED_GAP):  # below values[cut] is turned up by 2 pi
        turns = np.where(phase <= values[cut], 2 * np.pi, 0.0) if cut < len(values) - 1 else np.zeros(phase.shape)
        image = phase + turns
        level = float(image.mean() - image.min())  # the mean of the image this cut gives
        if best is None or level < best[0] - TIED_GAP:
            best = (level, turns - image.min())
    return best[1]


def align_amplitude(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """recon scaled to the truth's mean (at any scale: no floor under the mean); an all-zero recon stays zero."""
    mean = float(recon.mean(dtype=np.float64))
    return recon * (truth.mean(dtype=np.float64) / mean) if mean > 0 else recon


def align_phase(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The truth plus the wrapped residual of recon after removing the best-fit plane of their difference.

    Exact for any offset a plus a ramp with |b| H + |c| W < 2 pi: the circular-mean offset is then
    the plane's central value, and what is left of the plane never wraps.
    """
    diff = wrap(recon - truth)  # (H, W)
    offset = np.angle(np.exp(1j * diff).mean())  # robust constant first, so the plane fit sees no wraps
    diff = wrap(diff - offset)
    rows, cols = np.indices(truth.shape)  # (H, W) each
    design = np.stack([np.ones(truth.size), rows.ravel(), cols.ravel()], axis=1)  # (H*W, 3)
    coef, *_ = np.linalg.lstsq(design, diff.ravel(), rcond=None)
    return truth + wrap(diff - (design @ coef).reshape(truth.shape))


def _ring_sums(values: np.ndarray, ring: np.ndarray, n_rings: int) -> np.ndarray:
    return np.bincount(ring.ravel(), values.ravel(), minlength=n_rings + 1)[1:n_rings + 1]  # rings 1..n


def frc50(a: np.ndarray, b: np.ndarray) -> float:
    """Spatial frequency (cycles/pixel) of the first Fourier ring where a and b correlate below 0.5.

    A ring with no power in either image counts as agreeing (1), with power in only one as 0.
    """
    # float64 throughout (numpy keeps float32 input in complex64, whose power overflows from ~1e18)
    fa, fb = (np.fft.fftshift(np.fft.fft2(np.asarray(image, dtype=np.float64))) for image in (a, b))  # (H, W)
    h, w = a.shape
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(h)), np.fft.fftshift(np.fft.fftfreq(w)), indexing="ij")
    ring = np.rint(np.hypot(fy, fx) * min(h, w)).astype(int)  # ring index, 1 ring = 1/min(h, w) cycles/px
    n_rings = min(h, w) // 2
    cross = _ring_sums((fa * fb.conj()).real, ring, n_rings)
    power_a = _ring_sums(np.abs(fa) ** 2, ring, n_rings)
    power_b = _ring_sums(np.abs(fb) ** 2, ring, n_rings)
    norm = np.sqrt(power_a) * np.sqrt(power_b)  # no epsilon: FRC is scale-free
    empty = np.where(power_a + power_b == 0, 1.0, 0.0)
    frc = np.divide(cross, norm, out=empty, where=norm > 0)
    below = np.nonzero(frc < 0.5)[0]
    return float((below[0] + 1) / min(h, w)) if below.size else 0.5


def psnr(recon: np.ndarray, truth: np.ndarray, data_range: float) -> float:
    """10 log10(data_range^2 / MSE) in dB, at most PSNR_CAP_DB (MSE 0 scores the cap)."""
    mse = float(np.mean(np.square(recon.astype(np.float64) - truth)))
    return PSNR_CAP_DB if mse == 0 else min(10 * math.log10(data_range**2 / mse), PSNR_CAP_DB)


def ssim(recon: np.ndarray, truth: np.ndarray, data_range: float) -> float | None:
    """torchmetrics' SSIM; None for an image smaller than its Gaussian window (no window fits)."""
    if min(truth.shape) < SSIM_WINDOW:
        return None
    p = torch.from_numpy(recon.astype(np.float64))[None, None]  # (1, 1, H, W)
    t = torch.from_numpy(truth.astype(np.float64))[None, None]
    return float(structural_similarity_index_measure(p, t, data_range=data_range, kernel_size=SSIM_WINDOW))


def _image_metrics(recon: np.ndarray, truth: np.ndarray) -> dict[str, float | str | None]:
    data_range = float(truth.max() - truth.min())
    h, w = truth.shape
    metrics = {
        "mae": float(np.abs(recon - truth).mean()),
        "psnr": psnr(recon, truth, data_range),
        "ssim": ssim(recon, truth, data_range),
        "frc50": frc50(recon, truth) if min(h, w) >= FRC_MIN_SIZE else None,
    }
    reasons = []
    if metrics["ssim"] is None:
        reasons.append(f"the scored image ({h}x{w} px) is smaller than the {SSIM_WINDOW} px SSIM window, so SSIM "
                       "is undefined")
    if metrics["frc50"] is None:
        reasons.append(SMALL_FOR_FRC.format(h=h, w=w, rings=FRC_MIN_SIZE // 2))
    if reasons:
        metrics["reason"] = "; ".join(reasons)
    return metrics


def _undefined(reason: str) -> dict:
    return {**dict.fromkeys(METRICS), "reason": reason}


def constant_amplitude(amplitude: np.ndarray) -> bool:
    """A value range below CONSTANT_RANGE of the largest value: scale-free, as the alignment is."""
    return float(np.ptp(amplitude)) <= CONSTANT_RANGE * float(np.max(amplitude))


def constant_phase(phase: np.ndarray) -> bool:
    """Every phase within CONSTANT_RANGE radians of their circular mean (a constant phase near +-pi
    spans almost 2 pi as plain numbers)."""
    unit = np.exp(1j * phase.astype(np.float64))
    return float(np.max(np.abs(np.angle(unit * np.conj(unit.mean()))))) < CONSTANT_RANGE


def _channel(recon: np.ndarray, truth: np.ndarray, align: Callable[[np.ndarray, np.ndarray], np.ndarray],
             constant: bool, constant_reason: str) -> dict:
    if constant:
        return _undefined(constant_reason)
    return _image_metrics(align(recon, truth), truth)


def score(recon: np.ndarray, truth: np.ndarray) -> dict:
    """Metrics of one complex object (H, W) against its complex ground truth (H, W)."""
    if not np.isfinite(recon).all():
        return {channel: _undefined(NONFINITE) for channel in CHANNELS}
    amplitude, phase = np.abs(truth), np.angle(truth)
    shift = phase_shift(phase)  # the same to both: a recon equal to the truth stays equal, bit for bit
    return {"amplitude": _channel(np.abs(recon), amplitude, align_amplitude, constant_amplitude(amplitude),
                                  CONSTANT_AMPLITUDE),
            "phase": _channel(np.angle(recon).astype(np.float64) + shift, phase.astype(np.float64) + shift,
                              align_phase, constant_phase(phase), CONSTANT_PHASE)}


def score_objects(recons: np.ndarray, truths: np.ndarray) -> dict:
    """Per-object metrics and their mean over objects (null if any object is null, with the reasons)."""
    per_object = [score(r, t) for r, t in zip(recons, truths)]
    mean = {}
    for channel in CHANNELS:
        mean[channel] = {name: _mean([o[channel][name] for o in per_object]) for name in METRICS}
        reasons = sorted({o[channel]["reason"] for o in per_object if "reason" in o[channel]})
        if reasons:
            mean[channel]["reason"] = "; ".join(reasons)
    return {"mean": mean, "per_object": per_object, "alignment": ALIGNMENT}


def _mean(values: list[float | None]) -> float | None:
    """Mean over objects; null if any object has no value (or, as a guard, if the mean is not finite)."""
    if not values or any(v is None for v in values):
        return None
    value = float(np.mean(values))
    return value if math.isfinite(value) else None


def phase_seam_ratio(recons: np.ndarray, truths: np.ndarray, stride: int) -> float | None:
    """How much more the phase error jumps across stitching seams than inside the stitched crops.

    e = angle(recon * conj(truth)) per pixel (a global offset cancels); a jump is |wrap(e[x+1] - e[x])|
    between neighbours along rows and along columns. Seams lie between crops (every ``stride``
    pixels); the ratio is the mean seam jump over the mean jump between neighbours of one crop.
    1 = seams invisible; patches with their own phase offsets give > 1. Pixels reconstructed as exactly
    0 (unlit at gridsize 2, ``overlap.unlit_fraction``) have no phase: pairs with one are left out
    (they scored 0 jumps, a ratio of 0 read as better than seamless). None when not finite or when
    the region has no seam (or no pair on either side of the ratio).
    """
    if not np.all(np.isfinite(recons)) or min(recons.shape[-2:]) <= stride or stride < 2:
        return None  # no seam, or (stride 1) nothing but seams
    error = np.angle(recons * np.conj(truths))  # (I, H, W)
    has_phase = recons != 0
    seam, inside = [], []
    for axis in (-1, -2):
        jumps = np.abs(wrap(np.diff(error, axis=axis)))  # (I, H, W-1) or (I, H-1, W)
        both = has_phase.take(range(jumps.shape[axis]), axis=axis) & has_phase.take(
            range(1, jumps.shape[axis] + 1), axis=axis)  # both pixels of the pair have a phase
        at_seam = ((np.arange(jumps.shape[axis]) + 1) % stride == 0).reshape(
            (-1, 1) if axis == -2 else (1, -1))  # between pixel k*stride - 1 and k*stride
        seam.append(jumps[both & at_seam])
        inside.append(jumps[both & ~at_seam])
    seam_jumps, inside_jumps = np.concatenate(seam), np.concatenate(inside)
    if seam_jumps.size == 0 or inside_jumps.size == 0:
        return None
    inside_mean = float(inside_jumps.mean())
    return float(seam_jumps.mean() / inside_mean) if inside_mean > 0 else None
