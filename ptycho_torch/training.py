"""The training entry point: shared-field guard, seeding, model + data + Trainer, fit.

Deterministic mode, the intra-op thread count and denormal flushing are process-wide torch
settings; they are restored after the fit so that a library call leaves the caller's global state
as it found it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from ptycho_torch.config import PRECISIONS, PyTorchExecutionConfig, TrainingConfig, check_shared_fields
from ptycho_torch.cpu_settings import flushed_denormals, run_threads
from ptycho_torch.datamodule import GridLinesDataModule
from ptycho_torch.model import PtychoPINN
from ptycho_torch.npz_data import GridLinesData
from ptycho_torch.overlap import assemble_objects, canvas_side, group_members, group_offsets
from ptycho_torch.scan import extract_patches
from ptycho_torch.trainer import AdaptiveThreads, build_trainer, precision_run


@dataclass
class TrainedModel:
    module: PtychoPINN
    trainer: L.Trainer
    data: GridLinesDataModule
    initial_digest: str  # parameter_digest before the first step: equal after = never trained
    thread_changes: list[dict[str, Any]]  # when an automatic thread count was re-chosen (trainer.AdaptiveThreads)


def train(training: TrainingConfig, execution: PyTorchExecutionConfig, train_data: GridLinesData,
          output_dir: Path, *, plugins: Sequence[Any] = (), callbacks: Sequence[Any] = (),
          module_class: type[PtychoPINN] = PtychoPINN, group_spacing: int | None = None,
          resume_from: Path | None = None) -> TrainedModel:
    """Fit the PINN on ``train_data``; refuses to start when shared settings disagree.

    ``group_spacing``: at gridsize 2, how far apart (pixels) a training group's members are; the
    workflow passes the test split's stride (see ``overlap.group_members``). ``resume_from``: an
    epoch-end checkpoint of this run to continue from (see resume.py)."""
    check_shared_fields(training, execution)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        module = build_module(training, train_data.probeGuess, module_class)
        module.data_digest = train_data.digest()  # recorded in its checkpoints (a resume compares it)
        initial_digest = parameter_digest(module)
        data = GridLinesDataModule(train_data, training, execution, group_spacing)
        trainer = build_trainer(training, execution, Path(output_dir), plugins=plugins, callbacks=callbacks)
        with run_threads(execution), flushed_denormals():
            trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    (threads,) = [callback for callback in trainer.callbacks if isinstance(callback, AdaptiveThreads)]  # build_trainer's
    return TrainedModel(module, trainer, data, initial_digest, threads.changes)


def build_module(training: TrainingConfig, probe, module_class: type[PtychoPINN] = PtychoPINN) -> PtychoPINN:
    """The model for ``probe`` (N, N) complex, its initial weights drawn from ``training.seed``."""
    torch.manual_seed(training.seed)
    return module_class(training, torch.as_tensor(probe))


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, bit for bit (equal digests = identical weights)."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def prediction_autocast(precision: str, device: torch.device):
    """Prediction at the precision the run trains at, as Lightning's own predict loop would run it:
    ``bf16-mixed`` under bf16 autocast, ``16-mixed`` under fp16 autocast (bf16 on a CPU, where
    Lightning replaces it by bf16-mixed), ``32-true`` in float32. The spectral layers' DFT
    products, the heads' output activations and the overlap merge stay in float32 either way
    (they leave autocast themselves); the convolutions, the heads' 1x1 projection included, do not."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: must be one of {', '.join(PRECISIONS)}")
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision_run(precision, device.type) == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_patches(module: PtychoPINN, data: GridLinesData, batch_size: int,
                    precision: str = "32-true") -> torch.Tensor:
    """Object patches (M, N, N) complex64 for every pattern of ``data``, in file order, at
    ``precision`` (``prediction_autocast``).

    A plain loop in this process, not ``trainer.predict``: under DDP that would shard the patterns
    across ranks, and stitching on rank 0 needs all of them. At gridsize 2 every group is predicted
    and merged as in training, the group canvases are assembled into whole objects (phase-aligned
    weighted mean, ``overlap.assemble_objects``), and each pattern's patch is cut from its object.
    """
    module.eval()
    with prediction_autocast(precision, module.device):
        return _predict_patches(module, data, batch_size)


def _predict_patches(module: PtychoPINN, data: GridLinesData, batch_size: int) -> torch.Tensor:
    patterns = torch.from_numpy(data.diffraction)  # (M, N, N) float32
    gridsize = module.cfg.model.gridsize
    if gridsize == 1:
        batches = [module(patterns[i:i + batch_size].to(module.device)).to(torch.complex64).cpu()
                   for i in range(0, len(patterns), batch_size)]
        return batches[0] if len(batches) == 1 else torch.cat(batches)  # (M, N, N) complex64
    groups = group_members(data.coords, data.image_index, gridsize)  # (G, C)
    offsets = torch.from_numpy(group_offsets(data.coords, groups))  # (G, C, 2)
    side = canvas_side(offsets, data.N)
    canvases, weights = zip(*[_padded_canvas(module, patterns[groups[i:i + batch_size]], offsets[i:i + batch_size], side)
                              for i in range(0, len(groups), batch_size)])
    origins = data.coords[groups].min(axis=1)  # (G, 2)
    extent = data.coords.max(axis=0) + data.N  # (2,) rows, cols of the scanned objects
    objects = assemble_objects(np.concatenate(canvases), np.concatenate(weights), origins,
                               data.image_index[groups[:, 0]], (int(data.image_index.max()) + 1, *extent))
    return torch.from_numpy(extract_patches(objects, data.coords, data.N, data.image_index))  # (M, N, N)


def _padded_canvas(module: PtychoPINN, diffraction: torch.Tensor, offsets: torch.Tensor, side: int):
    """One batch of group canvases and weights as numpy, padded to a common side."""
    canvas, weight = module.group_canvas(diffraction.to(module.device), offsets.to(module.device))
    pad = side - canvas.shape[-1]
    return (np.pad(canvas.to(torch.complex64).cpu().numpy(), ((0, 0), (0, pad), (0, pad))),
            np.pad(weight.float().cpu().numpy(), ((0, 0), (0, pad), (0, pad))))
