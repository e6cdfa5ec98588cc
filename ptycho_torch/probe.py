"""The illumination P: an ideal disk probe, or one read from an NPZ file (key ``probeGuess``).

Ideal probe of side N (radius r from the array centre (N - 1) / 2, all lengths in pixels):

    window = exp(-r^2 / (2 (N/4)^2))                  Gaussian window
    disk   = [window >= exp(-1/2)]  i.e. r <= N/4     thresholded window: a disk of diameter N/2
    P      = G_{N/32} * disk  x  window, scaled to a peak amplitude of 1, zero phase

The smoothing (Gaussian blur of sigma N/32) softens the disk edge so the far field has no
ringing from a hard step; a support of diameter ~N/2 oversamples the far field by ~2.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.ndimage import gaussian_filter

from ptycho_torch.npz_data import DataError, check_probe, read_arrays


def ideal_probe(N: int) -> np.ndarray:
    """A smooth, Gaussian-windowed disk probe, (N, N) complex64, peak amplitude 1."""
    offsets = np.arange(N) - (N - 1) / 2  # (N,)
    radius = np.hypot(offsets[:, None], offsets[None, :])  # (N, N)
    sigma = N / 4
    window = np.exp(-0.5 * (radius / sigma) ** 2)  # (N, N)
    disk = (window >= np.exp(-0.5)).astype(np.float64)  # (N, N): r <= sigma
    amplitude = gaussian_filter(disk, N / 32, mode="constant") * window
    return (amplitude / amplitude.max()).astype(np.complex64)


def load_probe(npz_path: str | os.PathLike, N: int) -> np.ndarray:
    """The ``probeGuess`` (N, N) complex array of an NPZ file as complex64; DataError if absent or wrong."""
    arrays = read_arrays(npz_path, keys=("probeGuess",))  # a dataset file may hold much more
    if "probeGuess" not in arrays:
        raise DataError(npz_path, "probeGuess", "the key", "it missing")
    return check_probe(arrays["probeGuess"], npz_path, N)
