"""Build ``lightning.Trainer`` from PyTorchExecutionConfig (and the epoch count from TrainingConfig).

``gradient_clip_val`` is never handed to the Trainer: under manual optimization Lightning
raises inside ``fit()`` when it is set, and clipping is the model's job (see model.py).
The shared-field guard runs first, on every rank, so that disagreeing configs never train.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig, check_shared_fields


def build_logger(execution: PyTorchExecutionConfig, output_dir: Path) -> Logger | bool:
    if execution.logger_backend == "csv":
        return CSVLogger(output_dir, name="logs", version="")
    if execution.logger_backend == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise RuntimeError("logger_backend=tensorboard needs the tensorboard package: pip install tensorboard")
        return TensorBoardLogger(output_dir, name="logs", version="")
    return False


def build_trainer(training: TrainingConfig, execution: PyTorchExecutionConfig, output_dir: Path, *,
                  plugins: Sequence[Any] = (), callbacks: Sequence[Any] = ()) -> L.Trainer:
    check_shared_fields(training, execution)
    if execution.precision == "16-mixed" and execution.accelerator == "cpu" and not plugins:
        warnings.warn("precision=16-mixed on accelerator=cpu: Lightning runs bf16 autocast without a GradScaler",
                      stacklevel=2)
    callbacks = list(callbacks)
    if execution.enable_checkpointing:
        callbacks.append(ModelCheckpoint(dirpath=output_dir / "checkpoints", save_last=True))
    return L.Trainer(
        accelerator=execution.accelerator,
        devices=execution.devices,
        strategy=execution.strategy,
        num_nodes=execution.num_nodes,
        precision=None if plugins else execution.precision,
        plugins=list(plugins) or None,
        deterministic=execution.deterministic,
        max_epochs=training.epochs,
        logger=build_logger(execution, output_dir),
        enable_checkpointing=execution.enable_checkpointing,
        enable_progress_bar=execution.enable_progress_bar,
        enable_model_summary=False,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=output_dir,
        gradient_clip_val=None,  # clipping is done by the model under manual optimization
    )
