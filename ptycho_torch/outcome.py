"""A finished run's outcome, decided from what it produced: ok, diverged, untrained or collapsed.

    diverged   the reconstruction, the final train loss or the final validation loss is not finite
    untrained  no optimizer step was applied (every step skipped), the weights are bit for bit the
               initial ones, or every recorded loss equals the first (the loss never moved)
    collapsed  a reconstructed object's amplitude or phase is constant: its spread over the scored
               region is below 1 % of the ground truth's (``collapse_reason``); or the reconstruction
               does not depend on the measured patterns: with the test patterns exchanged among the
               scan positions no pixel moves by 1 % of the truth's amplitude spread
               (``ignores_input_reason``; at gridsize 2 a fixed output per place in the group merges
               into an image that is not constant, so the first test alone misses it)
    ok         otherwise

Such a run still writes its artifacts (they are the evidence); the status goes into metrics.json
and the command exits with status 3, so a sweep cannot mistake it for a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

OK, DIVERGED, UNTRAINED, COLLAPSED = "ok", "diverged", "untrained", "collapsed"
COLLAPSE_SPREAD = 0.01  # a reconstruction whose spread is below this share of the truth's is constant


class NonFiniteGradientError(FloatingPointError):
    """A run stopped on a non-finite gradient under nonfinite_grad_policy=error (exit status 3)."""


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def _spread(values: np.ndarray, channel: str, scale_to: np.ndarray | None = None) -> float:
    """Standard deviation of an object's amplitude (brought to the mean amplitude of ``scale_to``,
    as scoring aligns it: a right structure at another overall scale is not constant), or of its
    phase around its circular mean (so that a constant phase near +-pi still counts as constant)."""
    if channel == "amplitude":
        amplitude = np.abs(values)
        return float(np.std(amplitude if scale_to is None else amplitude * _to_scale_of(values, scale_to)))
    unit = np.exp(1j * np.angle(values))
    return float(np.std(np.angle(unit * np.conj(np.mean(unit)))))


def collapse_reason(recons: np.ndarray, truths: np.ndarray) -> str | None:
    """Why the reconstruction collapsed to a constant amplitude or phase, or None.

    recons, truths: (I, H, W) complex, the scored region. A channel whose truth is itself
    constant (a zero-phase object) cannot tell a collapse and is not judged."""
    for index, (recon, truth) in enumerate(zip(recons, truths)):
        for channel in ("amplitude", "phase"):
            truth_spread, spread = _spread(truth, channel), _spread(recon, channel, scale_to=truth)
            if truth_spread > 0 and spread < COLLAPSE_SPREAD * truth_spread:
                return (f"object {index}: the reconstructed {channel} is constant (spread {spread:.3g}, under "
                        f"{COLLAPSE_SPREAD:.0%} of the ground truth's {truth_spread:.3g})")
    return None


def ignores_input_reason(recons: np.ndarray, exchanged: np.ndarray, truths: np.ndarray) -> str | None:
    """Why the reconstruction ignores the measurements, or None: ``exchanged`` is the reconstruction
    from the same test patterns exchanged among the scan positions (I, H, W complex, as ``recons``).
    Each object's movement is taken at the truth's scale, as scoring aligns it (a file whose truth is
    in other units than the reconstruction's was called collapsed)."""
    moved = max(_moved(recon, other, truth) for recon, other, truth in zip(recons, exchanged, truths))
    spread = max(_spread(truth, "amplitude") for truth in truths)
    if spread > 0 and moved < COLLAPSE_SPREAD * spread:
        return (f"the reconstruction does not depend on the measured patterns: exchanging them among the scan "
                f"positions moves no pixel by {COLLAPSE_SPREAD:.0%} of the ground truth's amplitude spread "
                f"(at most {moved:.3g} against {spread:.3g})")
    return None


def _moved(recon: np.ndarray, exchanged: np.ndarray, truth: np.ndarray) -> float:
    """The largest pixel movement between ``recon`` and ``exchanged``, brought to the mean amplitude of
    ``truth`` (the mean-ratio scale scoring applies)."""
    return float(np.max(np.abs(recon.astype(np.complex128) - exchanged))) * _to_scale_of(recon, truth)


def _to_scale_of(values: np.ndarray, truth: np.ndarray) -> float:
    """The factor that brings ``values``' mean amplitude to ``truth``'s (the mean-ratio scale scoring
    applies); 1 for an all-zero ``values``."""
    mean = float(np.mean(np.abs(values)))
    return float(np.mean(np.abs(truth))) / mean if mean > 0 else 1.0


def exchanged_patterns(count: int) -> np.ndarray:
    """Every pattern to another scan position (half the split away), for ``ignores_input_reason``."""
    return np.roll(np.arange(count), count // 2)


def run_status(recons: np.ndarray, losses: Sequence[float], final_val_loss: float | None, *,
               steps_applied: int, weights_changed: bool, collapse: str | None = None) -> tuple[str, str | None]:
    """(status, reason); reason is None when the status is ok. ``collapse``: ``collapse_reason``'s answer."""
    of_reconstruction = reconstruction_status(recons, collapse)
    if of_reconstruction[0] == DIVERGED:
        return of_reconstruction
    if losses and not _finite(losses[-1]):
        return DIVERGED, "the final train loss is not finite"
    if not _finite(final_val_loss):
        return DIVERGED, "the final validation loss is not finite"
    if steps_applied == 0:
        return UNTRAINED, "no optimizer step was applied (every step was skipped)"
    if not weights_changed:
        return UNTRAINED, "the weights are unchanged from their initial values"
    if len(losses) > 1 and all(loss == losses[0] for loss in losses):
        return UNTRAINED, "the loss never moved from its first value"
    return of_reconstruction


def reconstruction_status(recons: np.ndarray, collapse: str | None = None) -> tuple[str, str | None]:
    """What the reconstruction alone tells (the reconstruct command has no training to judge):
    diverged when it is not finite, collapsed with ``collapse``'s reason, else ok."""
    if not np.all(np.isfinite(recons)):
        return DIVERGED, "the reconstruction holds non-finite values"
    if collapse is not None:
        return COLLAPSED, collapse
    return OK, None
