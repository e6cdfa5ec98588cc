"""The iterative reference: each test object reconstructed from its own patterns by a field library.

Engine: cdtools-py (``pip install -e ".[baselines]"``), its ``SimplePtycho`` model with the probe
held at the file's probe and the positions at the file's coords, the object fitted by the
library's Adam reconstructor (amplitude-MSE loss; one iteration = one pass over the object's
patterns in shuffled minibatches of ``BATCH_SIZE``, step ``LEARNING_RATE``: the library's defaults).
It starts from a flat object (ones) or from a given estimate of the scored region (a PINN's
stitched reconstruction, its amplitude scaled to the data first).

Conventions, converted here and nowhere else (``tests/ptycho_torch/test_baseline.py`` holds them):
- positions: our top-left (row, col) pixel corners become the library's 3-vector translations
  (row, col, 0) in a basis of one unit per object pixel, rows first (``PIXEL_BASIS``); the library
  rounds them and cuts the same top-left window.
- units: the library adds 1e-7 to every simulated intensity (a floor under the amplitude's
  gradient), far above the tails of our unit-energy patterns, so patterns go in as photon counts,
  (diffraction * intensity_scale)^2, and the probe as probe * intensity_scale; the object stays in
  the file's units.
- transform: the library propagates fftshift(fft2(ifftshift(psi), ortho)); the real-space ifftshift
  is a circular shift of psi, which changes only the far-field phase, so the amplitude is ours
  (``physics.far_field_amplitude``).
- device: the engine runs on the CPU (its seconds are CPU seconds, also in a GPU study).
- canvas: rows and columns [0, max(coords) + N) of each object; scores use ``scan.stitched_region``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptycho_torch.cpu_settings import ThreadAdapter, in_automatic_block
from ptycho_torch.npz_data import GridLinesData
from ptycho_torch.scan import stitched_region

ENGINE = "cdtools-py SimplePtycho, Adam"
EXTRA = 'pip install -e ".[baselines]"'
BATCH_SIZE = 15  # the library's defaults
LEARNING_RATE = 0.005
PIXEL_BASIS = ((1.0, 0.0), (0.0, 1.0), (0.0, 0.0))  # (3, 2): pixel (row, col) -> translation (row, col, 0)


class EngineMissing(ImportError):
    """The optional iterative engine is not installed."""


def engine():
    """The cdtools module, or EngineMissing saying how to install it."""
    try:
        import cdtools
    except ImportError as err:
        raise EngineMissing(f"the iterative baseline needs cdtools-py, which is not installed ({err}); "
                            f"install it with {EXTRA}") from None
    return cdtools


def translations(coords: np.ndarray) -> torch.Tensor:
    """Top-left (row, col) corners (M, 2) -> the library's translations (M, 3) float32."""
    out = torch.zeros((len(coords), 3), dtype=torch.float32)
    out[:, :2] = torch.from_numpy(np.asarray(coords, dtype=np.float32))
    return out


def photon_counts(diffraction: np.ndarray, intensity_scale: float) -> torch.Tensor:
    """Stored amplitudes (M, N, N) -> the intensities the library fits, in photon counts."""
    return torch.from_numpy(np.square(diffraction.astype(np.float64) * intensity_scale).astype(np.float32))


def canvas_shape(coords: np.ndarray, N: int) -> tuple[int, int]:
    """The object canvas the scan touches: (max row + N, max col + N)."""
    return int(coords[:, 0].max()) + N, int(coords[:, 1].max()) + N


def library_model(obj: np.ndarray, probe: np.ndarray, intensity_scale: float):
    """The library's model of one object canvas (rows, cols) complex, lit by the fixed probe."""
    cdtools = engine()
    model = cdtools.models.SimplePtycho(1.0, torch.tensor(PIXEL_BASIS), torch.from_numpy(probe * intensity_scale),
                                        torch.from_numpy(np.asarray(obj, dtype=np.complex64)))
    model.probe.requires_grad_(False)  # the probe is known: only the object is fitted
    return model


def simulated_amplitudes(obj: np.ndarray, probe: np.ndarray, coords: np.ndarray, intensity_scale: float) -> np.ndarray:
    """The library's forward model of ``obj`` at ``coords``, in the file's amplitude units (M, N, N)."""
    model = library_model(obj, probe, intensity_scale)
    with torch.no_grad():
        intensities = model.forward(torch.arange(len(coords)), translations(coords))  # (M, N, N) counts
    return (intensities.sqrt() / intensity_scale).numpy()


@dataclass(frozen=True)
class Step:
    iteration: int  # 0 = the start
    seconds: float  # engine wall time so far, setup included, summed over the objects
    objects: np.ndarray  # (I, H, W) complex64: the scored region of every test object
    threads: int  # torch's intra-op threads this iteration ran with (the start: the count it began with)


def start_objects(data: GridLinesData, init: np.ndarray | None) -> list[np.ndarray]:
    """Each object's starting canvas: ones, or ``init`` (I, H, W) in the scored region within
    ``flat_fill`` of it, the whole canvas scaled by the least-squares factor that fits its patterns'
    amplitudes to the measured ones."""
    rows, cols = canvas_shape(data.coords, data.N)
    r0, r1, c0, c1 = stitched_region(data.metadata["object_size"], data.N, data.metadata["stride"])
    canvases = []
    for i in range(int(data.image_index.max()) + 1):
        if init is None:
            canvases.append(np.ones((rows, cols), dtype=np.complex64))
            continue
        canvas = np.full((rows, cols), flat_fill(init[i]), dtype=np.complex64)
        canvas[r0:r1, c0:c1] = init[i]
        mine = data.image_index == i
        model = simulated_amplitudes(canvas, data.probeGuess, data.coords[mine], data.intensity_scale)
        measured = data.diffraction[mine]
        canvases.append(canvas * np.float32(np.sum(model * measured, dtype=np.float64)
                                            / max(np.sum(model**2, dtype=np.float64), 1e-30)))
    return canvases


def flat_fill(region: np.ndarray) -> complex:
    """The flat value around a warm start: its mean amplitude at its mean phase. The global phase
    of a reconstruction is arbitrary; a margin at phase 0 around a region at another phase would
    put a step into every pattern that straddles the edge."""
    return complex(np.abs(region).mean() * np.exp(1j * np.angle(region.sum(dtype=np.complex128))))


def iterate(data: GridLinesData, iterations: int, *, init: np.ndarray | None = None, seed: int = 0) -> Iterator[Step]:
    """Reconstruct every test object of ``data`` for ``iterations``: Step 0 (the start), then one
    Step per iteration, the objects advanced in lockstep. The minibatch order is drawn from ``seed``
    (a generator of its own: the global torch generator is left alone). Inside an automatic
    ``intra_op_threads`` block the count is re-chosen between iterations as the machine's load
    changes, as a fit's is between steps (``cpu_settings.ThreadAdapter``)."""
    cdtools = engine()
    adapter = ThreadAdapter() if in_automatic_block() else None
    r0, r1, c0, c1 = stitched_region(data.metadata["object_size"], data.N, data.metadata["stride"])
    started = time.perf_counter()
    runs: list[tuple[Any, Iterator]] = []
    for i, canvas in enumerate(start_objects(data, init)):
        mine = data.image_index == i
        dataset = cdtools.datasets.Ptycho2DDataset(translations(data.coords[mine]),
                                                   photon_counts(data.diffraction[mine], data.intensity_scale))
        model = library_model(canvas, data.probeGuess, data.intensity_scale)
        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed + i))
        reconstructor = cdtools.reconstructors.AdamReconstructor(model, dataset)
        runs.append((model, reconstructor.optimize(iterations, lr=LEARNING_RATE, custom_data_loader=loader,
                                                   thread=False)))
    seconds = time.perf_counter() - started

    def region() -> np.ndarray:
        return np.stack([model.obj.detach().numpy()[r0:r1, c0:c1] for model, _ in runs]).astype(np.complex64)

    yield Step(0, seconds, region(), torch.get_num_threads())
    for iteration in range(1, iterations + 1):
        threads = torch.get_num_threads()
        started = time.perf_counter()
        for _, steps in runs:
            next(steps)
        seconds += time.perf_counter() - started
        yield Step(iteration, seconds, region(), threads)
        if adapter is not None:
            adapter.poll()  # a new count from the next iteration on


def warm_up(data: GridLinesData) -> None:
    """One untimed iteration: the first call in a process pays one-off costs (lazy initialization,
    allocator growth) that a reconstruction of each new scan would not; a warm PINN is timed too."""
    for _ in iterate(data, 1):
        pass


def run(data: GridLinesData, counts: list[int], *, init: np.ndarray | None = None,
        target_phase_ssim: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Reconstruct to max(counts) iterations; scores, seconds and the objects at each count, with a
    target the first iteration (0 = the start) whose mean phase SSIM reaches it (None: not within
    max(counts)), and the thread counts it ran with (the first iteration of each). Scoring is not timed."""
    from ptycho_torch.metrics import score_objects

    wanted = set(counts)
    at: dict[int, dict[str, Any]] = {}
    reached = None
    threads: list[dict[str, int]] = []
    for step in iterate(data, max(counts), init=init, seed=seed):
        if not threads or threads[-1]["threads"] != step.threads:
            threads.append({"iteration": step.iteration, "threads": step.threads})
        scores = None
        if step.iteration in wanted or (target_phase_ssim is not None and reached is None):
            scores = score_objects(step.objects, data.YY_ground_truth)
        if reached is None and target_phase_ssim is not None:
            phase = scores["mean"]["phase"]["ssim"]
            if phase is not None and phase >= target_phase_ssim:
                reached = {"iterations": step.iteration, "seconds": step.seconds}
        if step.iteration in wanted:
            at[step.iteration] = {"seconds": step.seconds, "metrics": scores, "objects": step.objects,
                                  "finite": bool(np.isfinite(step.objects).all())}
    return {"at": at, "reached": reached, "threads": threads}
