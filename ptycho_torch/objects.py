"""Grid-lines test objects: random one-pixel lines, blurred at three scales.

Recipe (after upstream PtychoPINN's grid-lines study, which draws 400 lines on a 784 px
canvas and keeps the central 392 px):

    L    = n_lines random one-pixel lines on a canvas of side 2S (values 0 / 1)
    B    = G_1 * L + 2 G_5 * L + 5 G_10 * L        (G_s: Gaussian blur of sigma s pixels)
    A    = B[S/2 : S/2 + S, S/2 : S/2 + S] / max(B[crop])   amplitude in [0, 1], max exactly 1
    phi  = 0, or with set_phi:  pi * tanh((A - max(A) / 2) / (3 mean(A)))   in [-pi, pi]

Our reading of "lines": each line is horizontal or vertical (a fair coin), at a uniform
row/column, starting at a uniform pixel with a uniform length in 1..2S (clipped at the
canvas edge); crossings stay 1. Normalising to a peak of 1 keeps every object in the same
transmission range whatever n_lines is. A crop that no line reaches (n_lines = 0, say) is a
flat, fully transmitting object (A = 1), so the photon scaling downstream stays finite.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

BLUR_SIGMAS = (1.0, 5.0, 10.0)  # pixels
BLUR_WEIGHTS = (1.0, 2.0, 5.0)


def _runs(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, size: int) -> np.ndarray:
    """Count, per pixel, the horizontal runs [start, stop) on each row that cover it."""
    edges = np.zeros((size, size + 1))  # (C, C + 1): +1 where a run starts, -1 one past its end
    np.add.at(edges, (rows, starts), 1.0)
    np.add.at(edges, (rows, stops), -1.0)
    return np.cumsum(edges, axis=1)[:, :size]  # (C, C)


def draw_lines(canvas_size: int, n_lines: int, rng: np.random.Generator) -> np.ndarray:
    """A (C, C) float64 canvas of n_lines random horizontal / vertical one-pixel lines (0 / 1)."""
    horizontal = rng.random(n_lines) < 0.5
    fixed = rng.integers(0, canvas_size, n_lines)  # the line's row (horizontal) or column
    starts = rng.integers(0, canvas_size, n_lines)
    stops = np.minimum(starts + rng.integers(1, canvas_size + 1, n_lines), canvas_size)
    h, v = horizontal, ~horizontal
    covered = _runs(fixed[h], starts[h], stops[h], canvas_size) + _runs(fixed[v], starts[v], stops[v], canvas_size).T
    return (covered > 0).astype(np.float64)  # (C, C)


def blurred_amplitude(canvas: np.ndarray, size: int) -> np.ndarray:
    """Blur the line canvas at three scales, keep its central (S, S) crop, scale it to a peak of 1."""
    blurred = sum(w * gaussian_filter(canvas, s, mode="constant") for s, w in zip(BLUR_SIGMAS, BLUR_WEIGHTS))
    start = (canvas.shape[0] - size) // 2
    crop = blurred[start:start + size, start:start + size]  # (S, S) float64
    peak = crop.max()
    amplitude = crop / peak if peak > 0 else np.ones_like(crop)
    return amplitude.astype(np.float32)


def phase_from_amplitude(amplitude: np.ndarray) -> np.ndarray:
    """phi = pi * tanh((A - max(A) / 2) / (3 mean(A))), float32; A must have a positive mean."""
    a = amplitude.astype(np.float64)
    return (np.pi * np.tanh((a - a.max() / 2) / (3 * a.mean()))).astype(np.float32)


def grid_lines_amplitude_phase(size: int, n_lines: int, rng: np.random.Generator,
                               *, set_phi: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and phase, both (S, S) float32, of one grid-lines object of side S."""
    amplitude = blurred_amplitude(draw_lines(2 * size, n_lines, rng), size)
    phase = phase_from_amplitude(amplitude) if set_phi else np.zeros_like(amplitude)
    return amplitude, phase


def as_complex(amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """O = A exp(i phi) as complex64."""
    return (amplitude * np.exp(1j * phase.astype(np.float64))).astype(np.complex64)
