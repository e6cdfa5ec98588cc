"""Config validation: every rule names its field, all problems are reported at once."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from ptycho_torch.config import (
    FIELD_RULES, FLOAT32_MAX, FLOAT32_TINY, LARGEST_INT, MAX_SEED, ConfigError, Interval, ModelConfig, Optional,
    PowerOfTwo, PyTorchExecutionConfig, SimulationConfig, TrainingConfig, ZeroOr, check_shared_fields, check_values,
    plain_int, shown_value,
)
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, setup_torch_configs
from tests.strategies import boundary_examples

CLASSES = (ModelConfig, TrainingConfig, PyTorchExecutionConfig, SimulationConfig, TorchRunnerConfig)

# (class, field, value) for every class that holds the field and every boundary example of its rule.
VALID = [pytest.param(name, good, id=f"{name}={good!r}")
         for name, rule in FIELD_RULES.items() for good in boundary_examples(rule)[0]]
INVALID = [pytest.param(cls, f.name, bad, id=f"{cls.__name__}.{f.name}={bad!r}")
           for cls in CLASSES for f in dataclasses.fields(cls)
           for bad in boundary_examples(FIELD_RULES[f.name])[1]]


@pytest.mark.parametrize("name, good", VALID)
def test_each_bound_of_a_rule_is_accepted(name, good):
    assert check_values("test", {name: good}).keys() == {name}


@pytest.mark.parametrize("cls, name, bad", INVALID)
def test_one_step_outside_a_rule_raises_config_error_naming_the_field(cls, name, bad):
    with pytest.raises(ConfigError) as err:
        cls(**{name: bad})
    assert name in err.value.fields
    assert f"{name}={shown_value(bad)}" in str(err.value)  # a path as its string


INTEGER_FIELDS = sorted(name for name, rule in FIELD_RULES.items()
                        if isinstance(getattr(rule, "inner", rule), Interval) and getattr(rule, "inner", rule).kind is int)


@pytest.mark.parametrize("name", INTEGER_FIELDS)
def test_no_integer_setting_takes_a_count_beyond_int64(name):
    # torch, numpy and itertools refuse sizes above 2**63 - 1 deep inside a run, after its folder was written
    with pytest.raises(ConfigError) as err:
        check_values("test", {name: 2**63})
    assert name in err.value.fields


def test_every_field_of_every_config_has_a_rule():
    for cls in CLASSES:
        assert {f.name for f in dataclasses.fields(cls)} <= set(FIELD_RULES), cls.__name__


def test_a_config_field_without_a_rule_is_refused_naming_it():
    broken = dataclasses.make_dataclass("BrokenConfig", [("lr_cycle_length", int, dataclasses.field(default=5))],
                                        bases=(TrainingConfig,), frozen=True, kw_only=True)
    with pytest.raises(TypeError, match="lr_cycle_length"):
        broken()


def test_boundary_examples_follow_the_rule_objects():
    """Moving a bound moves the examples: the tests restate no bound by hand."""
    valid, invalid = boundary_examples(Interval(float, 0.0, 1.0, lo_open=True))
    assert valid == [math.nextafter(0.0, 1.0), 1.0] and 0.0 in invalid and math.nextafter(1.0, 2.0) in invalid
    valid, invalid = boundary_examples(Interval(int, 3, 7))
    assert valid == [3, 7] and {2, 8} <= set(invalid)


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


CROSS_BOUNDARIES = [
    pytest.param(ModelConfig, dict(N=32, probe_mask_diameter=32.0), id="mask-as-wide-as-N"),
    pytest.param(ModelConfig, dict(architecture="fno", N=32, fno_modes=16), id="fno-modes-at-N-over-2"),
    pytest.param(ModelConfig, dict(architecture="hybrid", N=16, fno_modes=8), id="hybrid-modes-at-N-over-2"),
    pytest.param(TrainingConfig, dict(scheduler="WarmupCosine", epochs=3, lr_warmup_epochs=2),
                 id="warmup-one-below-epochs"),
    pytest.param(TrainingConfig, dict(scheduler="ReduceLROnPlateau", learning_rate=1e-3,
                                      plateau_min_lr=math.nextafter(1e-3, 0.0)),
                 id="plateau-floor-just-below-the-rate"),
    pytest.param(TrainingConfig, dict(scheduler="ReduceLROnPlateau", val_fraction=math.nextafter(0.0, 1.0)),
                 id="plateau-with-the-least-validation"),
    pytest.param(SimulationConfig, dict(N=64, object_size=64), id="object-exactly-one-patch"),
    pytest.param(SimulationConfig, dict(N=16, train_stride=16, test_stride=16), id="strides-equal-to-N"),
]


@pytest.mark.parametrize("cls, values", CROSS_BOUNDARIES)
def test_each_cross_field_rule_accepts_its_exact_boundary(cls, values):
    # the rules say "<= N", "<= N/2", ">= N", "< epochs", "< learning_rate", "> 0": the limit itself is valid
    cfg = cls(**values)
    assert {name: getattr(cfg, name) for name in values} == values


# The documented bounds, written out by hand: the boundary tests above derive their examples from
# the rule objects, so a moved bound would move its own tests. "None or" / "0 or" wrap the rule.
DOCUMENTED_BOUNDS = {
    "N": "power of two 16..256",
    "cnn_channels": "int 1..512",
    "fno_modes": "int 1..max",
    "fno_width": "int 1..512",
    "fno_blocks": "int 1..32",
    "fno_cnn_blocks": "int 0..32",
    "probe_mask_diameter": "None or float (0, inf)",
    "gridsize": "int 1..2",
    "seed": f"int 0..{MAX_SEED}",
    "epochs": "int 1..max",
    "batch_size": "int 1..max",
    "learning_rate": "float [tiny, float32 max]",
    "gradient_clip_val": "None or 0 or float [tiny, inf)",
    "weight_decay": "0 or float [tiny, float32 max]",
    "momentum": "float [0, 1)",
    "adam_beta1": "float [0, 1)",
    "adam_beta2": "float [0, 1)",
    "lr_gamma": "float (0, 1]",
    "lr_warmup_epochs": "int 0..max",
    "lr_min_ratio": "float [0, 1]",
    "plateau_factor": "float (0, 1)",
    "plateau_patience": "int 0..max",
    "plateau_min_lr": "0 or float [tiny, float32 max]",
    "plateau_threshold": "float [0, inf)",
    "val_fraction": "float [0, 0.5]",
    "grad_norm_log_freq": "int 1..max",
    "object_size": "int 16..4096",
    "n_lines": "int 0..100000",
    "nphotons": "float [1, 1e+15]",
    "n_train_images": "int 1..64",
    "n_test_images": "int 1..64",
    "train_stride": "int 1..256",
    "test_stride": "int 1..256",
    "probe_defocus": "float [0, 100]",
    "data_seed": f"int 0..{MAX_SEED}",
    "devices": "int 1..1024",
    "num_nodes": "int 1..1024",
    "num_workers": "int 0..256",
    "num_threads": "int 0..1024",
    "infer_batch_size": "int 1..max",
}


def bounds_of(rule) -> str | None:
    """A rule's bounds in the table's words (None: the rule has no bounds, e.g. a Choice)."""
    if isinstance(rule, (Optional, ZeroOr)):
        inner = bounds_of(rule.inner)
        return inner and ("None or " if isinstance(rule, Optional) else "0 or ") + inner
    if isinstance(rule, PowerOfTwo):
        return f"power of two {rule.lo}..{rule.hi}"
    if not isinstance(rule, Interval):
        return None
    if rule.kind is int:
        return f"int {rule.lo}..{'max' if rule.hi == LARGEST_INT else rule.hi}"
    words = {FLOAT32_TINY: "tiny", FLOAT32_MAX: "float32 max"}
    lo, hi = (words.get(x, f"{x:g}") for x in (rule.lo, rule.hi))
    left, right = "(" if rule.lo_open else "[", ")" if rule.hi_open or rule.hi == math.inf else "]"
    return f"float {left}{lo}, {hi}{right}"


def test_every_bounded_rule_keeps_its_documented_bounds():
    actual = {name: bounds_of(rule) for name, rule in FIELD_RULES.items() if bounds_of(rule) is not None}
    assert actual == DOCUMENTED_BOUNDS


@pytest.mark.parametrize("argv", [["--gridsize", "3"], ["--nphotons", "1e16"], ["--N", "512"]],
                         ids=["int-interval", "float-interval", "power-of-two"])
def test_a_value_past_a_bound_exits_2_before_the_output_folder_is_made(argv, tmp_path, capsys):
    from scripts.studies.grid_lines_torch_runner import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output-dir", str(out)])
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err
    assert not out.exists()


def test_plain_int_takes_up_to_its_digit_count_and_no_more():
    assert plain_int("123456789") == 123456789  # 9 digits: the default limit itself
    assert plain_int("1234567890") is None
    assert plain_int("100000", digits=6) == 100000 and plain_int("1000000", digits=6) is None


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


@pytest.mark.parametrize("name", ["learning_rate", "gradient_clip_val", "weight_decay", "plateau_min_lr"])
def test_a_value_a_fit_would_read_as_zero_is_refused_and_zero_means_what_it_says(name):
    """Subnormal floats are flushed to zero during a fit: a learning rate of 1e-320 trained at 0, a
    clip of 1e-320 was off and one of 1e-39 zeroed every gradient."""
    for subnormal in (1e-320, 1e-39, math.nextafter(FLOAT32_TINY, 0.0)):
        with pytest.raises(ConfigError, match="smallest normal number") as err:
            TrainingConfig(**{name: subnormal})
        assert err.value.fields == (name,)
    assert getattr(TrainingConfig(**{name: FLOAT32_TINY}), name) == FLOAT32_TINY
    if name != "learning_rate":  # 0: off (the clip) or none (the decay, the floor)
        assert getattr(TrainingConfig(**{name: 0}), name) == 0.0
    for negative in (-1.0, -FLOAT32_TINY):
        with pytest.raises(ConfigError):
            TrainingConfig(**{name: negative})


@pytest.mark.parametrize("name, value", [("gradient_clip_val", 1.0), ("learning_rate", 0.5)])
def test_shared_field_guard_refuses_disagreement(name, value):
    training, execution = setup_torch_configs(TorchRunnerConfig())
    with pytest.raises(ConfigError) as err:
        check_shared_fields(training, dataclasses.replace(execution, **{name: value}))
    assert err.value.fields == (name,)
