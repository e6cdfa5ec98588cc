"""Config validation: every rule names its field, all problems are reported at once."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given

from ptycho_torch.config import (
    FIELD_RULES, ConfigError, ModelConfig, PyTorchExecutionConfig, SimulationConfig,
    TrainingConfig, check_shared_fields,
)
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, setup_torch_configs
from tests.strategies import runner_configs

pytestmark = pytest.mark.contract

CLASSES = (ModelConfig, TrainingConfig, PyTorchExecutionConfig, SimulationConfig, TorchRunnerConfig)
NAN, INF = math.nan, math.inf

# One or more values that break each field's own rule.
INVALID: dict[str, tuple] = {
    "architecture": ("resnet", None), "training_procedure": ("both",), "N": (48, 8, 512, 64.0, True),
    "generator_output_mode": ("polar",), "cnn_channels": (0,), "fno_modes": (0, 1.5),
    "fno_width": (0,), "fno_blocks": (0,), "fno_cnn_blocks": (-1,), "probe_mask": (1, "yes"),
    "probe_mask_diameter": (0.0, -3.0, NAN, INF), "seed": (-1, 2**32, 1.0),
    "epochs": (0, -2, True), "batch_size": (0,), "learning_rate": (0.0, -1e-3, NAN, INF, "1e-3"),
    "gradient_clip_val": (-1.0, -1e-12, NAN, INF, -INF, "1.0", True), "gradient_clip_algorithm": ("l2", "AGC"),
    "torch_loss_mode": ("mse",), "optimizer": ("lamb",), "weight_decay": (-0.1, NAN),
    "momentum": (1.0, -0.1), "adam_beta1": (1.0,), "adam_beta2": (1.5, NAN), "scheduler": ("cosine",),
    "lr_gamma": (0.0, 1.5), "lr_warmup_epochs": (-1,), "lr_min_ratio": (1.5, -0.1),
    "plateau_factor": (0.0, 1.0), "plateau_patience": (-1,), "plateau_min_lr": (-1.0,),
    "plateau_threshold": (INF,), "val_fraction": (0.6, -0.1), "log_grad_norm": (None,),
    "grad_norm_log_freq": (0,), "nonfinite_grad_policy": ("ignore",), "object_size": (8,),
    "n_lines": (-1,), "nphotons": (0.0, INF), "n_train_images": (0,), "n_test_images": (0,),
    "train_stride": (0,), "test_stride": (0,), "set_phi": ("true",), "probe_npz": ("", 3), "probe_defocus": (-0.5, NAN, 101.0),
    "data_seed": (-5,), "accelerator": ("tpu",), "devices": (0,), "strategy": ("fsdp",),
    "num_nodes": (0,), "precision": ("16-true", 16), "deterministic": (0,), "num_workers": (-1,),
    "infer_batch_size": (0,), "enable_progress_bar": ("no",), "enable_checkpointing": (None,),
    "logger_backend": ("wandb",), "train_npz": ("", 1.5), "test_npz": ("", 2), "output_dir": ("", None),
    "overwrite": ("false",),
}

CASES = [
    pytest.param(cls, name, bad, id=f"{cls.__name__}.{name}={bad!r}")
    for cls in CLASSES for f in dataclasses.fields(cls) if f.name in INVALID
    for name, bad in [(f.name, b) for b in INVALID[f.name]]
]


def test_every_rule_has_invalid_cases():
    assert set(FIELD_RULES) == set(INVALID)


@pytest.mark.parametrize("cls, name, bad", CASES)
def test_invalid_value_raises_config_error_naming_the_field(cls, name, bad):
    with pytest.raises(ConfigError) as err:
        cls(**{name: bad})
    assert name in err.value.fields
    assert f"{name}={bad!r}" in str(err.value)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_are_valid(cls):
    cls()


def test_two_invalid_fields_are_both_named_in_one_error():
    with pytest.raises(ConfigError) as err:
        TrainingConfig(epochs=0, gradient_clip_val=-1.0)
    assert set(err.value.fields) == {"epochs", "gradient_clip_val"}


def test_runner_reports_problems_of_every_destination_at_once():
    with pytest.raises(ConfigError) as err:
        TorchRunnerConfig(N=48, epochs=0, devices=0, object_size=4)
    assert set(err.value.fields) == {"N", "epochs", "devices", "object_size"}


CROSS_CASES = [
    pytest.param(ModelConfig, dict(architecture="fno", N=32, fno_modes=17), "fno_modes", id="fno-modes-above-N-over-2"),
    pytest.param(ModelConfig, dict(architecture="hybrid", N=16, fno_modes=12), "fno_modes", id="hybrid-modes-above-N-over-2"),
    pytest.param(ModelConfig, dict(N=32, probe_mask_diameter=40.0), "probe_mask_diameter", id="mask-wider-than-N"),
    pytest.param(TrainingConfig, dict(scheduler="WarmupCosine", epochs=3, lr_warmup_epochs=3),
                 "lr_warmup_epochs", id="warmup-not-below-epochs"),
    pytest.param(TrainingConfig, dict(scheduler="ReduceLROnPlateau", val_fraction=0.0),
                 "val_fraction", id="plateau-without-validation"),
    pytest.param(SimulationConfig, dict(N=64, object_size=32), "object_size", id="object-smaller-than-patch"),
    pytest.param(SimulationConfig, dict(N=16, train_stride=17), "train_stride", id="stride-above-N"),
    pytest.param(TorchRunnerConfig, dict(train_npz="train.npz"), "test_npz", id="train-npz-without-test-npz"),
    pytest.param(TorchRunnerConfig, dict(test_npz="test.npz"), "train_npz", id="test-npz-without-train-npz"),
]


@pytest.mark.parametrize("cls, values, name", CROSS_CASES)
def test_cross_field_rule_names_the_field_and_the_fix(cls, values, name):
    with pytest.raises(ConfigError) as err:
        cls(**values)
    assert err.value.fields == (name,)
    assert "must be" in str(err.value)


def test_cnn_ignores_fno_modes_so_a_small_N_needs_no_fno_flags():
    assert ModelConfig(architecture="cnn", N=16).fno_modes == 12


def test_clip_value_sentinels_mean_off_and_ints_become_floats():
    assert TrainingConfig(gradient_clip_val=None).gradient_clip_val is None
    assert TrainingConfig(gradient_clip_val=0).gradient_clip_val == 0.0
    assert type(TrainingConfig(gradient_clip_val=2).gradient_clip_val) is float


def test_paths_accept_str_and_are_stored_as_path():
    cfg = TorchRunnerConfig(train_npz="a/train.npz", test_npz=Path("a/test.npz"), output_dir="out")
    assert cfg.train_npz == Path("a/train.npz") and isinstance(cfg.output_dir, Path)


def test_training_config_rejects_a_model_that_is_not_a_model_config():
    with pytest.raises(ConfigError) as err:
        TrainingConfig(model={"N": 64}, epochs=0)
    assert set(err.value.fields) == {"model", "epochs"}


@given(runner_configs())
def test_shared_field_guard_accepts_resolved_configs(cfg):
    check_shared_fields(*setup_torch_configs(cfg))


@pytest.mark.parametrize("name, value", [("gradient_clip_val", 1.0), ("learning_rate", 0.5)])
def test_shared_field_guard_refuses_disagreement(name, value):
    training, execution = setup_torch_configs(TorchRunnerConfig())
    with pytest.raises(ConfigError) as err:
        check_shared_fields(training, dataclasses.replace(execution, **{name: value}))
    assert err.value.fields == (name,)
