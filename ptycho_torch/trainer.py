"""Build ``lightning.Trainer`` from PyTorchExecutionConfig (and the epoch count from TrainingConfig).

``gradient_clip_val`` is never handed to the Trainer: under manual optimization Lightning
raises inside ``fit()`` when it is set, and clipping is the model's job (see model.py).
The shared-field guard runs first, on every rank, so that disagreeing configs never train.

Checkpoints (``enable_checkpointing``) are written at the end of every training epoch, after the
model's own epoch-end work (history rows, scheduler step), each file atomically: ``last.ckpt``
is what ``--resume`` continues from. With the weights they hold the optimizer, scheduler,
precision (GradScaler) and loop states (Lightning's), the run's records (``PtychoPINN``) and the
random generators' states (``RandomStates``).
"""

from __future__ import annotations

import importlib.util
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from ptycho_torch.artifacts import atomic_file
from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig, check_shared_fields
from ptycho_torch.cpu_settings import ThreadAdapter, in_automatic_block
from ptycho_torch.inference import device_of
from ptycho_torch import interrupts

INTERRUPTED_CHECKPOINT = "interrupted.ckpt"
LAST_CHECKPOINT = "last.ckpt"  # the newest epoch-end checkpoint (ModelCheckpoint's save_last)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Each checkpoint is written to a temporary beside it and renamed into place: a run killed
    while saving leaves the previous complete checkpoint, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            torch.save(checkpoint, handle)


class RandomStates(Callback):
    """The global random generators (torch CPU and CUDA, numpy, Python) in every checkpoint, set
    back when a fit resumes from one. Plain lists and tensors only: loadable with weights_only."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state(legacy=False)
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                                   "pos": numpy_state["state"]["pos"]}},
                "python": random.getstate()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        numpy_state = state_dict["numpy"]
        np.random.set_state({**numpy_state, "state": {"key": np.asarray(numpy_state["state"]["key"], np.uint32),
                                                      "pos": numpy_state["state"]["pos"]}})
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))


class RunCheckpoints(ModelCheckpoint):
    """Lightning's checkpointing, for a run folder that may have been moved or copied before a resume.

    The callback's state records its folder; where the run is resumed from another path, Lightning
    forgets which files it wrote, keeps the old newest checkpoint and writes ``last-v1.ckpt`` beside a
    stale ``last.ckpt``. Here the recorded paths are moved into the folder the run is in now."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("dirpath")
        if recorded is not None and self.dirpath is not None and recorded != self.dirpath:
            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{key: self._moved(state_dict.get(key), recorded)
                             for key in ("best_model_path", "kth_best_model_path", "last_model_path")},
                          "best_k_models": {self._moved(path, recorded): score
                                            for path, score in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)

    def _moved(self, path: str | None, recorded: str) -> str | None:
        if not path or not Path(path).is_relative_to(recorded):
            return path
        return str(Path(self.dirpath) / Path(path).relative_to(recorded))


class StopOnSignal(Callback):
    """SIGTERM / SIGINT during the fit: every rank stops between optimizer steps (see interrupts).

    At train start our handler replaces Lightning's (which would broadcast inside the handler)
    and passes the signal on to the ranks Lightning started. On ``Interrupted`` a single-process
    run saves its state as ``interrupted.ckpt`` (saving is collective under DDP, and the other
    ranks are stopping too). It stopped inside an epoch: ``--resume`` continues from the last
    epoch-end checkpoint instead, whose data order it can replay exactly.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        launcher = trainer.strategy.launcher
        interrupts.reclaim(launcher.kill if isinstance(launcher, _SubprocessScriptLauncher) else None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.folder is None or not isinstance(exception, interrupts.Interrupted) or trainer.world_size > 1:
            return
        trainer.save_checkpoint(self.folder / INTERRUPTED_CHECKPOINT)  # atomic (AtomicCheckpointIO)


class AdaptiveThreads(Callback):
    """A single-process fit with automatic threads re-chooses its count between steps as other
    processes start or stop beside it (``cpu_settings.ThreadAdapter``); ``changes`` records when,
    across resumes (the record travels in the checkpoints as this callback's state). Only inside an
    automatic ``intra_op_threads`` block (``training.train`` opens one): a Trainer fitted outside one
    keeps the caller's count."""

    def __init__(self, adapts: bool = True) -> None:
        self.adapts = adapts  # False: only the record is kept (and carried on), no count is changed
        self.adapter: ThreadAdapter | None = None
        self.changes: list[dict[str, Any]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # its first window opens as the steps begin
        self.adapter = ThreadAdapter() if self.adapts and in_automatic_block() else None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.adapter is None:
            return
        changed = self.adapter.poll()
        if changed is not None:
            count, others = changed
            self.changes.append({"step": trainer.global_step, "threads": count, "others_busy": round(others, 2)})

    def state_dict(self) -> dict[str, Any]:
        return {"changes": [dict(change) for change in self.changes]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.changes = [dict(change) for change in state_dict.get("changes", [])]


def adapts_threads(execution: PyTorchExecutionConfig) -> bool:
    """Whether a fit under ``execution`` re-chooses its thread count: automatic threads, one process
    (the ranks of a multi-process run would count each other as load), no DataLoader workers (their
    processes, the run's own, would read as other load too)."""
    return (execution.num_threads == 0 and execution.devices == 1 and execution.num_nodes == 1
            and execution.num_workers == 0)


def build_logger(execution: PyTorchExecutionConfig, output_dir: Path) -> Logger | bool:
    if execution.logger_backend == "csv":
        return CSVLogger(output_dir, name="logs", version="")
    if execution.logger_backend == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise RuntimeError("logger_backend=tensorboard needs the tensorboard package: pip install tensorboard")
        return TensorBoardLogger(output_dir, name="logs", version="")
    return False


def fp16_runs_as_bf16(precision: str, device_type: str) -> bool:
    """Whether Lightning runs ``precision`` as bf16-mixed there: a CPU has no fp16 autocast."""
    return precision == "16-mixed" and device_type == "cpu"


def precision_run(precision: str, device_type: str) -> str:
    """The precision Lightning runs when asked for ``precision`` on that device type."""
    return "bf16-mixed" if fp16_runs_as_bf16(precision, device_type) else precision


def build_trainer(training: TrainingConfig, execution: PyTorchExecutionConfig, output_dir: Path, *,
                  plugins: Sequence[Any] = (), callbacks: Sequence[Any] = ()) -> L.Trainer:
    check_shared_fields(training, execution)
    if fp16_runs_as_bf16(execution.precision, device_of(execution.accelerator).type) and not plugins:
        where = "" if execution.accelerator == "cpu" else " (the CPU: no GPU is visible)"
        warnings.warn(f"precision=16-mixed on accelerator={execution.accelerator}{where}: Lightning runs bf16 "
                      "autocast without a GradScaler", stacklevel=2)
    checkpoints = output_dir / "checkpoints" if execution.enable_checkpointing else None
    callbacks = [*callbacks, StopOnSignal(checkpoints)]
    callbacks.append(AdaptiveThreads(adapts_threads(execution)))  # also where it does not adapt: the record goes on
    if checkpoints is not None:
        callbacks += [RandomStates(), RunCheckpoints(dirpath=checkpoints, save_last=True, save_on_train_epoch_end=True)]
    trainer = L.Trainer(
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
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer
