"""The run pipeline's pieces that need no training: where a simulation is written, what a DDP
rank records of itself, and which of a DDP run's processes warns of crowded cores."""

from __future__ import annotations

import json
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only

from ptycho_torch import cpu_settings
from ptycho_torch.config import PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.generators import tiny_model_config
from ptycho_torch.npz_data import load_npz
from ptycho_torch.training import parameter_digest
from ptycho_torch.workflow import RunPlan, load_or_simulate, prepare, write_rank_record
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, plan_of
from tests.helpers import QUIET, TINY_SIMULATION


def simulated_plan(output_dir) -> RunPlan:
    return RunPlan(training=TrainingConfig(model=tiny_model_config("cnn")), execution=PyTorchExecutionConfig(**QUIET),
                   simulation=TINY_SIMULATION, train_npz=None, test_npz=None, output_dir=output_dir,
                   overwrite=False, record={})


def test_a_simulation_is_written_to_the_data_folder_and_nowhere_without_one(tmp_path):
    plan = simulated_plan(tmp_path / "run")
    train, test = load_or_simulate(plan, tmp_path / "data")
    assert sorted(os.listdir(tmp_path / "data")) == ["test.npz", "train.npz"]
    assert np.array_equal(load_npz(tmp_path / "data" / "train.npz", "train").diffraction, train.diffraction)
    assert np.array_equal(load_npz(tmp_path / "data" / "test.npz", "test").diffraction, test.diffraction)
    again, _ = load_or_simulate(plan, None)
    assert os.listdir(tmp_path) == ["data"] and np.array_equal(again.diffraction, train.diffraction)


def test_a_rank_record_holds_its_rank_the_world_size_the_parameter_digest_and_the_history(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    module.history = [{"step": 0, "loss": 1.5}]
    trained = SimpleNamespace(module=module, trainer=SimpleNamespace(global_rank=1, world_size=2))
    write_rank_record(trained, tmp_path / "ranks")
    assert os.listdir(tmp_path / "ranks") == ["rank1.json"]
    assert json.loads((tmp_path / "ranks" / "rank1.json").read_text()) == {
        "rank": 1, "world_size": 2, "parameters_sha256": parameter_digest(module),
        "history": [{"step": 0, "loss": 1.5}]}


@pytest.mark.parametrize("rank, warned", [(0, True), (1, False)])
def test_a_ddp_run_warns_of_crowded_cores_in_its_first_process_only(monkeypatch, tmp_path, rank, warned):
    monkeypatch.setattr(cpu_settings, "usable_cores", lambda: 2)
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    plan = plan_of(TorchRunnerConfig(accelerator="cpu", devices=3, strategy="ddp", output_dir=tmp_path / "run"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(plan, check_folder=rank == 0)
    assert len([w for w in caught if "training processes" in str(w.message)]) == (1 if warned else 0)
