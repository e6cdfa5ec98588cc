"""The Trainer factory: execution settings reach lightning.Trainer; the clip never does; checkpoints
are written whole or not at all and carry the random generators' states."""

from __future__ import annotations

import os
import random
import signal
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ptycho_torch.config import ConfigError, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch import trainer as trainer_module
from ptycho_torch.interrupts import Interrupted
from ptycho_torch.trainer import (AtomicCheckpointIO, RandomStates, RunCheckpoints, StopOnSignal, build_logger,
                                  build_trainer, precision_run)


def test_execution_settings_reach_the_trainer_and_the_clip_does_not(tmp_path):
    training = TrainingConfig(epochs=3, gradient_clip_val=0.5)
    execution = PyTorchExecutionConfig(gradient_clip_val=0.5, precision="bf16-mixed", enable_progress_bar=False,
                                       enable_checkpointing=True, logger_backend="csv")
    trainer = build_trainer(training, execution, tmp_path)
    assert trainer.gradient_clip_val is None
    assert trainer.max_epochs == 3 and trainer.precision == "bf16-mixed"
    assert isinstance(trainer.logger, CSVLogger) and trainer.progress_bar_callback is None
    assert any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)


def test_logger_none_and_no_checkpoints(tmp_path):
    execution = PyTorchExecutionConfig(logger_backend="none", enable_checkpointing=False)
    trainer = build_trainer(TrainingConfig(), execution, tmp_path)
    assert trainer.logger is None and not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_fp16_on_cpu_warns_that_it_runs_as_bf16(tmp_path, accelerator):
    if accelerator == "auto" and torch.cuda.is_available():
        pytest.skip("auto is a GPU here")
    # Lightning warns about bf16 too; ours is the one that names the missing GradScaler.
    with pytest.warns(UserWarning, match="bf16 autocast without a GradScaler") as caught:
        build_trainer(TrainingConfig(), PyTorchExecutionConfig(precision="16-mixed", accelerator=accelerator), tmp_path)
    ours = [str(w.message) for w in caught if "GradScaler" in str(w.message)]
    where = "" if accelerator == "cpu" else " (the CPU: no GPU is visible)"
    assert ours == [f"precision=16-mixed on accelerator={accelerator}{where}: Lightning runs bf16 autocast without a "
                    "GradScaler"]


def test_factory_refuses_disagreeing_shared_settings(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        build_trainer(TrainingConfig(learning_rate=0.1), PyTorchExecutionConfig(learning_rate=0.2), tmp_path)


def test_fp16_on_a_gpu_does_not_warn_and_keeps_its_precision(tmp_path, monkeypatch):
    """The bf16 warning is about the CPU alone (the Trainer is a stand-in: no GPU here)."""
    built = {}
    monkeypatch.setattr(trainer_module.L, "Trainer",
                        lambda **kwargs: built.update(kwargs) or SimpleNamespace(strategy=SimpleNamespace()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_trainer(TrainingConfig(), PyTorchExecutionConfig(precision="16-mixed", accelerator="gpu"), tmp_path)
    assert built["precision"] == "16-mixed" and built["accelerator"] == "gpu"


# --- checkpoints ------------------------------------------------------------------------------------

def test_a_checkpoint_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)

    def failing_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"epoch": 2}, path)
    assert os.listdir(path.parent) == ["last.ckpt"]
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_random_states_come_back_from_a_weights_only_checkpoint(tmp_path):
    states = RandomStates()
    path = tmp_path / "rng.ckpt"
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    torch.save(states.state_dict(), path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    states.load_state_dict(torch.load(path, weights_only=True))
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1]) and drawn[2] == expected[2]


@pytest.mark.parametrize("gpu_when_resumed", [True, False], ids=["gpu", "cpu_only"])
def test_the_cuda_generators_states_are_saved_on_a_gpu_and_set_back_where_a_gpu_is_visible(monkeypatch,
                                                                                           gpu_when_resumed):
    """A GPU run's checkpoint resumed on a machine without one sets the other generators back and
    leaves CUDA's alone (the CUDA calls are stand-ins: this machine has no GPU)."""
    saved_states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    set_back = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_back.append)
    state = RandomStates().state_dict()
    assert state["cuda"] is saved_states
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_when_resumed)
    RandomStates().load_state_dict(state)
    assert set_back == ([saved_states] if gpu_when_resumed else [])


# --- stopping and resuming --------------------------------------------------------------------------

@pytest.mark.parametrize("folder, exception, world_size, saved", [
    ("checkpoints", Interrupted(signal.SIGTERM), 1, True),
    ("checkpoints", RuntimeError("a fault"), 1, False),
    ("checkpoints", Interrupted(signal.SIGTERM), 2, False),
    (None, Interrupted(signal.SIGTERM), 1, False),
], ids=["interrupted", "a_fault", "ddp", "checkpointing_off"])
def test_only_an_interrupted_single_process_fit_that_keeps_checkpoints_saves_interrupted_ckpt(
        tmp_path, folder, exception, world_size, saved):
    written = []
    trainer = SimpleNamespace(world_size=world_size, save_checkpoint=written.append)
    folder = None if folder is None else tmp_path / folder
    StopOnSignal(folder).on_exception(trainer, None, exception)
    assert written == ([folder / "interrupted.ckpt"] if saved else [])


def test_checkpoints_recorded_in_a_moved_run_folder_are_found_in_the_folder_the_run_is_in_now(tmp_path):
    before = RunCheckpoints(dirpath=tmp_path / "old", save_last=True)
    old = Path(before.dirpath)
    before.best_model_path = str(old / "epoch=1.ckpt")
    before.kth_best_model_path = str(tmp_path / "elsewhere.ckpt")  # not in the run folder: kept as it is
    before.last_model_path = str(old / "last.ckpt")
    before.best_k_models = {str(old / "epoch=1.ckpt"): torch.tensor(0.5)}
    after = RunCheckpoints(dirpath=tmp_path / "new", save_last=True)
    new = Path(after.dirpath)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning warns when it drops the records of another folder
        after.load_state_dict(before.state_dict())
    assert after.last_model_path == str(new / "last.ckpt") and after.best_model_path == str(new / "epoch=1.ckpt")
    assert after.kth_best_model_path == str(tmp_path / "elsewhere.ckpt")
    assert list(after.best_k_models) == [str(new / "epoch=1.ckpt")]


def test_a_checkpoint_write_with_storage_options_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt", storage_options={"compress": True})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("precision, device_type, runs", [
    ("16-mixed", "cpu", "bf16-mixed"), ("16-mixed", "cuda", "16-mixed"),
    ("bf16-mixed", "cpu", "bf16-mixed"), ("32-true", "cpu", "32-true")])
def test_only_fp16_on_a_cpu_runs_at_another_precision_bf16(precision, device_type, runs):
    assert precision_run(precision, device_type) == runs


def test_a_tensorboard_logger_without_its_package_is_refused_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(RuntimeError, match="pip install tensorboard"):
        build_logger(PyTorchExecutionConfig(logger_backend="tensorboard"), tmp_path)


def test_checkpoint_records_without_a_folder_are_kept_as_recorded(tmp_path):
    before = RunCheckpoints(save_last=True)  # no folder yet: Lightning records dirpath None
    before.best_model_path = str(tmp_path / "old" / "epoch=1.ckpt")
    after = RunCheckpoints(dirpath=tmp_path / "new", save_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's "dirpath has changed"
        after.load_state_dict(before.state_dict())
    assert after.best_model_path == str(tmp_path / "old" / "epoch=1.ckpt")
