"""Build ``lightning.Trainer`` from PyTorchExecutionConfig (and the epoch count from TrainingConfig).

``gradient_clip_val`` is never handed to the Trainer: under manual optimization Lightning
raises inside ``fit()`` when it is set, and clipping is the model's job (see model.py).
The shared-field guard runs first, on every rank, so that disagreeing configs never train.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig, check_shared_fields
from ptycho_torch import interrupts

INTERRUPTED_CHECKPOINT = "interrupted.ckpt"


class StopOnSignal(Callback):
    """SIGTERM / SIGINT during the fit: every rank stops between optimizer steps (see interrupts).

    At train start our handler replaces Lightning's (which would broadcast inside the handler)
    and passes the signal on to the ranks Lightning started. On ``Interrupted`` a single-process
    run saves its state as ``interrupted.ckpt`` (saving is collective under DDP, and the other
    ranks are stopping too), written to a temporary name and renamed like every artifact.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        launcher = trainer.strategy.launcher
        interrupts.reclaim(launcher.kill if isinstance(launcher, _SubprocessScriptLauncher) else None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.folder is None or not isinstance(exception, interrupts.Interrupted) or trainer.world_size > 1:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{INTERRUPTED_CHECKPOINT}.{os.getpid()}.tmp"
        try:
            trainer.save_checkpoint(temporary)
            os.replace(temporary, self.folder / INTERRUPTED_CHECKPOINT)
        finally:
            temporary.unlink(missing_ok=True)


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
    checkpoints = output_dir / "checkpoints" if execution.enable_checkpointing else None
    callbacks = [*callbacks, StopOnSignal(checkpoints)]
    if checkpoints is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoints, save_last=True))
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
