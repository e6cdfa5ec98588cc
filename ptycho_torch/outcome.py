"""A finished run's outcome, decided from what it produced: ok, diverged or untrained.

    diverged   the reconstruction, the final train loss or the final validation loss is not finite
    untrained  no optimizer step was applied (every step skipped), the weights are bit for bit the
               initial ones, or every recorded loss equals the first (the loss never moved)
    ok         otherwise

Such a run still writes its artifacts (they are the evidence); the status goes into metrics.json
and the command exits with status 3, so a sweep cannot mistake it for a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

OK, DIVERGED, UNTRAINED = "ok", "diverged", "untrained"


class NonFiniteGradientError(FloatingPointError):
    """A run stopped on a non-finite gradient under nonfinite_grad_policy=error (exit status 3)."""


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def run_status(recons: np.ndarray, losses: Sequence[float], final_val_loss: float | None, *,
               steps_applied: int, weights_changed: bool) -> tuple[str, str | None]:
    """(status, reason); reason is None when the status is ok."""
    if not np.all(np.isfinite(recons)):
        return DIVERGED, "the reconstruction holds non-finite values"
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
    return OK, None
