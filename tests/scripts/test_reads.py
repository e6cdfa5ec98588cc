"""Read recording: a whole run reads every setting that is active under its configs.

The training (with its model), execution and simulation configs of a drawn run are replaced by
recording copies; the run then goes through ``ptycho_torch.workflow.run`` (simulate or load,
train, predict, stitch, score, write). Every setting that ``inert_settings`` does not declare
inert must have been read, or the test names it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, reject, strategies as st

from ptycho_torch import simulation, workflow
from ptycho_torch.config import ConfigError, RunSettings, active_settings
from ptycho_torch.probe import ideal_probe
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, plan_of
from tests.helpers import TRAINING_RUNS, recording
from tests.strategies import tiny_runner_configs


def recorded_plan(cfg: TorchRunnerConfig, reads: set[str]) -> workflow.RunPlan:
    plan = plan_of(cfg)
    model = recording(plan.training.model, reads, "model.")
    return dataclasses.replace(
        plan, training=recording(plan.training, reads, "training.", model=model),
        execution=recording(plan.execution, reads, "execution."),
        simulation=recording(plan.simulation, reads, "simulation."))


def unread_settings(cfg: TorchRunnerConfig) -> list[str]:
    reads: set[str] = set()
    plan = recorded_plan(cfg, reads)
    workflow.run(plan)
    run = RunSettings(plan.training, plan.execution, plan.simulation, simulated=cfg.train_npz is None)
    return sorted(active_settings(run) - reads)


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "probe.npz"
    np.savez(path, probeGuess=ideal_probe(16, 0.5))
    return path


@pytest.mark.integration
@TRAINING_RUNS
@given(data=st.data())
def test_every_active_setting_is_read_during_a_run(data, tiny_npz, probe_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reads") / "run"
    cfg = data.draw(tiny_runner_configs(out, *tiny_npz, probe_npz=probe_file))
    try:
        missing = unread_settings(cfg)
    except ConfigError:
        reject()  # refused for this data before the run starts (e.g. nothing to validate on): nothing ran
    assert missing == []


def ignoring(cfg, name: str, value):
    """A plain copy of a recording config that reads every field but ``name``, which is set to ``value``."""
    plain = type(cfg).__mro__[1]  # the config class under the recording subclass
    kept = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != name}
    return plain(**kept, **{name: value})


TINY = dict(N=16, object_size=32, n_lines=10, n_train_images=1, epochs=1, batch_size=8, cnn_channels=2,
            enable_progress_bar=False, logger_backend="none", enable_checkpointing=False)


def test_the_read_check_names_a_setting_the_simulation_ignores(tmp_path, monkeypatch):
    """A deliberately broken consumer: the simulation draws phases whatever set_phi says."""
    simulate_split = simulation.simulate_split

    def ignores_set_phi(sim, *args, **kwargs):
        return simulate_split(ignoring(sim, "set_phi", True), *args, **kwargs)

    monkeypatch.setattr(simulation, "simulate_split", ignores_set_phi)
    assert unread_settings(TorchRunnerConfig(output_dir=tmp_path / "run", **TINY)) == ["simulation.set_phi"]


def test_the_read_check_names_a_trainer_setting_that_is_ignored(tmp_path, monkeypatch):
    """A deliberately broken Trainer factory that never reads the strategy."""
    from ptycho_torch import training

    build_trainer = training.build_trainer

    def ignores_strategy(training_cfg, execution, output_dir, **kwargs):
        return build_trainer(training_cfg, ignoring(execution, "strategy", "auto"), output_dir, **kwargs)

    monkeypatch.setattr(training, "build_trainer", ignores_strategy)
    assert unread_settings(TorchRunnerConfig(output_dir=tmp_path / "run", **TINY)) == ["execution.strategy"]
