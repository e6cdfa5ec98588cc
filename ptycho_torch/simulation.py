"""Simulated grid-lines splits: objects, a raster scan, far-field diffraction with Poisson noise.

For each patch O_m of each object (PtychoPINN's forward model, ``physics.forward_amplitude``):

    A_m      = fftshift(|FFT2(O_m P)|) / N                        noiseless amplitude
    scale^2  = nphotons / mean_m sum_k A_m[k]^2                   once per split, from the noiseless data
    counts   ~ Poisson(scale^2 A_m^2)                             integer photon counts
    stored   = sqrt(counts) / scale   (float32)                   so counts = (stored * scale)^2

so the mean photon count per pattern is nphotons in expectation. Seeds: SeedSequence(data_seed)
spawns one child per split; each child's Generator draws that split's objects, then its noise,
so the same settings give byte-identical arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ptycho_torch.config import SimulationConfig, to_jsonable
from ptycho_torch.npz_data import SPLITS, GridLinesData, write_npz
from ptycho_torch.objects import as_complex, grid_lines_amplitude_phase
from ptycho_torch.physics import forward_amplitude
from ptycho_torch.probe import ideal_probe, load_probe
from ptycho_torch.scan import extract_patches, raster_positions, stitched_region

CHUNK_PATTERNS = 512  # patterns per forward-model call: 512 x 64 x 64 complex64 = 16 MiB


def _chunks(total: int) -> list[slice]:
    return [slice(start, min(start + CHUNK_PATTERNS, total)) for start in range(0, total, CHUNK_PATTERNS)]


def far_field(objects: np.ndarray, coords: np.ndarray, image_index: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """Noiseless amplitudes A of every patch, (M, N, N) float32, computed in chunks without autograd."""
    N = probe.shape[-1]
    out = np.empty((len(coords), N, N), dtype=np.float32)  # (M, N, N)
    probe_t = torch.from_numpy(probe)  # (N, N) complex64
    with torch.no_grad():
        for part in _chunks(len(coords)):
            patches = extract_patches(objects, coords[part], N, image_index[part])  # (B, N, N) complex64
            out[part] = forward_amplitude(torch.from_numpy(patches), probe_t).numpy()
    return out


def photon_scale(amplitudes: np.ndarray, nphotons: float) -> float:
    """The scale with scale^2 * mean over patterns of sum(A^2) == nphotons."""
    # chunked: one float64 copy of the whole split would cost more than the sum itself
    total = sum(np.square(amplitudes[part], dtype=np.float64).sum() for part in _chunks(len(amplitudes)))
    energy = total / len(amplitudes)
    if not energy > 0:
        raise ValueError("the simulated patterns carry no energy (object or probe is all zero)")
    return float(np.sqrt(nphotons / energy))


def add_poisson_noise(amplitudes: np.ndarray, scale: float, rng: np.random.Generator,
                      on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """Replace each amplitude by sqrt(Poisson(scale^2 A^2)) / scale, in place, chunk by chunk."""
    for part in _chunks(len(amplitudes)):
        expected = np.square(amplitudes[part], dtype=np.float64) * scale**2  # (B, N, N) mean counts
        counts = rng.poisson(expected)  # (B, N, N) int64
        amplitudes[part] = np.sqrt(counts) / scale
        if on_chunk:
            on_chunk(len(counts))
    return amplitudes


def simulate_split(sim: SimulationConfig, n_images: int, stride: int, rng: np.random.Generator,
                   probe: np.ndarray, *, split: str = "train",
                   on_chunk: Callable[[int], None] | None = None) -> GridLinesData:
    """One split: n_images objects scanned at ``stride``, with noisy diffraction (see module docstring)."""
    N, size = sim.N, sim.object_size
    probe = np.asarray(probe, dtype=np.complex64)  # (N, N), the contract's dtype
    maps = [grid_lines_amplitude_phase(size, sim.n_lines, rng, set_phi=sim.set_phi) for _ in range(n_images)]
    amplitude = np.stack([a for a, _ in maps])  # (I, S, S) float32
    phase = np.stack([p for _, p in maps])  # (I, S, S) float32
    objects = as_complex(amplitude, phase)  # (I, S, S) complex64
    grid = scan_grid(sim, stride)  # (m, 2)
    coords = np.tile(grid, (n_images, 1))  # (M, 2), M = I * m
    image_index = np.repeat(np.arange(n_images, dtype=np.int64), len(grid))  # (M,)
    diffraction = far_field(objects, coords, image_index, probe)  # (M, N, N) float32
    scale = photon_scale(diffraction, sim.nphotons)
    add_poisson_noise(diffraction, scale, rng, on_chunk)
    row0, row1, col0, col1 = stitched_region(size, N, stride)
    return GridLinesData(
        diffraction=diffraction,
        Y_I=extract_patches(amplitude, coords, N, image_index),  # (M, N, N) float32
        Y_phi=extract_patches(phase, coords, N, image_index),  # (M, N, N) float32
        coords=coords, image_index=image_index, probeGuess=probe, objectGuess=objects,
        intensity_scale=scale,
        metadata={**to_jsonable(sim), "split": split, "stride": stride},
        YY_ground_truth=objects[:, row0:row1, col0:col1].copy() if split == "test" else None,  # (I, H, W)
    )


def scan_grid(sim: SimulationConfig, stride: int) -> np.ndarray:
    """Top-left (row, col) of every patch of one object's raster scan, (m, 2) int64."""
    return raster_positions(sim.object_size, sim.N, stride)


def split_plan(sim: SimulationConfig) -> dict[str, tuple[int, int]]:
    """(n_images, stride) of each split."""
    return {"train": (sim.n_train_images, sim.train_stride), "test": (sim.n_test_images, sim.test_stride)}


def simulation_probe(sim: SimulationConfig) -> np.ndarray:
    """The (N, N) complex64 probe the simulation illuminates with: the ideal disk, or the given file's."""
    return ideal_probe(sim.N, sim.probe_defocus) if sim.probe_npz is None else load_probe(sim.probe_npz, sim.N)


def simulate_splits(sim: SimulationConfig, progress: bool = False) -> dict[str, GridLinesData]:
    """Simulate the train and test splits in memory (the same arrays ``simulate_dataset`` writes)."""
    probe = simulation_probe(sim)
    seeds = dict(zip(SPLITS, np.random.SeedSequence(sim.data_seed).spawn(len(SPLITS))))
    plan = split_plan(sim)
    total = sum(n * len(scan_grid(sim, stride)) for n, stride in plan.values())
    splits = {}
    with tqdm(total=total, disable=not progress, unit="pattern", desc="simulate") as bar:
        for split, (n_images, stride) in plan.items():
            rng = np.random.default_rng(seeds[split])
            splits[split] = simulate_split(sim, n_images, stride, rng, probe, split=split, on_chunk=bar.update)
    return splits


def write_dataset(splits: dict[str, GridLinesData], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write (and so validate) ``train.npz`` and ``test.npz`` into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_npz(out_dir / "train.npz", splits["train"]), write_npz(out_dir / "test.npz", splits["test"])


def simulate_dataset(sim: SimulationConfig, out_dir: str | os.PathLike, progress: bool = False) -> tuple[Path, Path]:
    """Simulate and write ``train.npz`` and ``test.npz`` into out_dir; return their paths."""
    return write_dataset(simulate_splits(sim, progress), out_dir)
