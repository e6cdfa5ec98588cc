"""Dead flags: every setting changes what it claims to, or is declared inert under the config."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from ptycho_torch.config import ConfigError, ModelConfig, PyTorchExecutionConfig, TrainingConfig, inert_settings
from ptycho_torch.generators import tiny_model_config
from ptycho_torch.model import NonFiniteGradientError, PtychoPINN
from ptycho_torch.probe import ideal_probe
from ptycho_torch.simulation import simulate_split
from ptycho_torch.training import parameter_digest, train
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, resolve_configs
from scripts.studies.runner_fields import route_of
from tests.conftest import TINY_SIMULATION
from tests.ptycho_torch.test_training import QUIET
from tests.strategies import runner_configs, runner_field_names


@pytest.mark.contract
@given(runner_configs(), runner_configs(), st.sampled_from(runner_field_names()))
def test_changing_one_runner_flag_changes_each_config_it_reaches(cfg, other, name):
    assume(getattr(cfg, name) != getattr(other, name))
    try:
        changed = dataclasses.replace(cfg, **{name: getattr(other, name)})
    except ConfigError:
        assume(False)  # the other value breaks a cross-field rule of this draw
    before, after = resolve_configs(cfg), resolve_configs(changed)
    route = route_of(next(f for f in dataclasses.fields(cfg) if f.name == name))
    for dest in route.to:
        assert before[dest] != after[dest], f"{name} did not change the {dest} config"
    assert route.to or changed != cfg


# --- behaviour in a short run ------------------------------------------------------------------

PLATEAU = dict(scheduler="ReduceLROnPlateau", plateau_threshold=1.0, plateau_patience=0, epochs=3)
# field -> (base training settings, model settings, value a, value b); both values valid and active.
CASES: dict[str, tuple[dict, dict, object, object]] = {
    "seed": ({}, {}, 1, 2),
    "epochs": ({}, {}, 1, 2),
    "batch_size": ({}, {}, 4, 8),
    "learning_rate": ({}, {}, 1e-3, 1e-2),
    "gradient_clip_val": ({}, {}, None, 1e-4),
    "gradient_clip_algorithm": (dict(gradient_clip_val=1e-4), {}, "norm", "value"),
    "torch_loss_mode": ({}, {}, "poisson", "mae"),
    "optimizer": ({}, {}, "adam", "sgd"),
    "weight_decay": ({}, {}, 0.0, 0.5),
    "momentum": (dict(optimizer="sgd"), {}, 0.0, 0.9),
    "adam_beta1": ({}, {}, 0.9, 0.5),
    "adam_beta2": ({}, {}, 0.999, 0.9),
    "scheduler": (dict(epochs=3), {}, "Default", "Exponential"),
    "lr_gamma": (dict(scheduler="Exponential"), {}, 0.5, 0.9),
    "lr_warmup_epochs": (dict(scheduler="WarmupCosine", epochs=3), {}, 0, 2),
    "lr_min_ratio": (dict(scheduler="WarmupCosine", epochs=3), {}, 0.0, 0.5),
    "plateau_factor": (PLATEAU, {}, 0.5, 0.1),
    "plateau_patience": (PLATEAU, {}, 0, 5),
    "plateau_min_lr": (PLATEAU | dict(plateau_factor=0.1), {}, 0.0, 5e-4),
    "plateau_threshold": (dict(PLATEAU), {}, 0.0, 1.0),
    "val_fraction": ({}, {}, 0.1, 0.3),
    "log_grad_norm": ({}, {}, True, False),
    "grad_norm_log_freq": ({}, {}, 1, 2),
    "nonfinite_grad_policy": ({}, {}, "skip", "error"),
    "architecture": ({}, {}, "cnn", "fno"),
    "training_procedure": ({}, {}, "pinn", "supervised"),
    "N": ({}, {}, 16, 32),
    "generator_output_mode": ({}, {}, "amp_phase", "real_imag"),
    "cnn_channels": ({}, {}, 2, 4),
    "fno_modes": ({}, dict(architecture="fno"), 2, 4),
    "fno_width": ({}, dict(architecture="fno"), 4, 8),
    "fno_blocks": ({}, dict(architecture="fno"), 1, 2),
    "fno_cnn_blocks": ({}, dict(architecture="fno"), 0, 1),
    "probe_mask": ({}, dict(probe_mask_diameter=6.0), False, True),  # default diameter N is wider than the ideal probe
    "probe_mask_diameter": ({}, dict(probe_mask=True), 4.0, 7.0),
}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def behaviour_settings() -> set[str]:
    return ({f.name for f in dataclasses.fields(TrainingConfig)} - {"model"}) | MODEL_FIELDS


def test_every_training_and_model_setting_has_a_behaviour_case():
    assert behaviour_settings() - set(CASES) == set()


def build(name: str, value) -> TrainingConfig:
    training, model, _, _ = CASES[name]
    model = {**model, name: value} if name in MODEL_FIELDS else model
    training = {**dict(epochs=2, batch_size=4), **training}
    training = {**training, name: value} if name not in MODEL_FIELDS else training
    return TrainingConfig(model=tiny_model_config(model.pop("architecture", "cnn"), N=model.pop("N", 16), **model),
                          **training)


class NaNOnce(PtychoPINN):
    """Injects one non-finite gradient element at the second optimizer step."""

    def on_before_optimizer_step(self, optimizer):
        if self.optimizer_steps == 1:
            next(self.parameters()).grad.view(-1)[0] = float("inf")
        super().on_before_optimizer_step(optimizer)


_DATA: dict[int, object] = {}


def data_for(N: int):
    if N not in _DATA:
        sim = dataclasses.replace(TINY_SIMULATION, N=N, object_size=2 * N)
        _DATA[N] = simulate_split(sim, 1, sim.train_stride, np.random.default_rng(0), ideal_probe(N))
    return _DATA[N]


def fingerprint(cfg: TrainingConfig, tmp_path) -> str:
    """A digest of everything a short run shows: weights, per-step history, or the error it raised."""
    execution = PyTorchExecutionConfig(gradient_clip_val=cfg.gradient_clip_val, learning_rate=cfg.learning_rate,
                                       **QUIET)
    try:
        module = train(cfg, execution, data_for(cfg.model.N), tmp_path, module_class=NaNOnce).module
    except NonFiniteGradientError as err:
        return f"raised {err}"
    return parameter_digest(module) + hashlib.sha256(repr(module.history).encode()).hexdigest()


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_setting_changes_a_short_run(name, tmp_path):
    _, _, a, b = CASES[name]
    cfg_a, cfg_b = build(name, a), build(name, b)
    assert name not in inert_settings(cfg_a) and name not in inert_settings(cfg_b)
    assert fingerprint(cfg_a, tmp_path / "a") != fingerprint(cfg_b, tmp_path / "b"), f"{name} changed nothing"


@pytest.mark.integration
@pytest.mark.parametrize("name, active_under, inert_under", [
    ("momentum", dict(optimizer="sgd"), dict(optimizer="adam")),
    ("lr_gamma", dict(scheduler="Exponential"), dict(scheduler="Default")),
])
def test_a_setting_declared_inert_really_changes_nothing(name, active_under, inert_under, tmp_path):
    values = {"momentum": (0.0, 0.9), "lr_gamma": (0.5, 0.9)}[name]
    runs = [fingerprint(TrainingConfig(model=tiny_model_config("cnn"), epochs=2, batch_size=4,
                                       **inert_under, **{name: v}), tmp_path / str(v)) for v in values]
    assert name in inert_settings(TrainingConfig(**inert_under)) and runs[0] == runs[1]
