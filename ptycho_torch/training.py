"""The training entry point: shared-field guard, seeding, model + data + Trainer, fit.

Deterministic mode is a process-wide torch switch; it is restored after the fit so that a
library call leaves the caller's global state as it found it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig, check_shared_fields
from ptycho_torch.datamodule import GridLinesDataModule
from ptycho_torch.model import PtychoPINN
from ptycho_torch.npz_data import GridLinesData
from ptycho_torch.trainer import build_trainer


@dataclass
class TrainedModel:
    module: PtychoPINN
    trainer: L.Trainer
    data: GridLinesDataModule


def train(training: TrainingConfig, execution: PyTorchExecutionConfig, train_data: GridLinesData,
          output_dir: Path, *, test_data: GridLinesData | None = None,
          plugins: Sequence[Any] = (), callbacks: Sequence[Any] = (),
          module_class: type[PtychoPINN] = PtychoPINN) -> TrainedModel:
    """Fit the PINN on ``train_data``; refuses to start when shared settings disagree."""
    check_shared_fields(training, execution)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        torch.manual_seed(training.seed)
        module = module_class(training, torch.from_numpy(train_data.probeGuess))
        data = GridLinesDataModule(train_data, test_data, training, execution)
        trainer = build_trainer(training, execution, Path(output_dir), plugins=plugins, callbacks=callbacks)
        trainer.fit(module, datamodule=data)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return TrainedModel(module, trainer, data)


def predict_patches(trained: TrainedModel) -> torch.Tensor:
    """Object patches (M, N, N) complex64 for the test split, in file order."""
    batches = trained.trainer.predict(trained.module, datamodule=trained.data)
    return torch.cat(batches).cpu()
