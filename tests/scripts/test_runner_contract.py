"""Round trip and drift gate: every runner setting reaches the configs it is routed to."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from hypothesis import Phase, example, given, settings

from ptycho_torch.config import ModelConfig, TrainingConfig
from scripts.studies import grid_lines_torch_runner as runner
from scripts.studies.grid_lines_torch_runner import (
    NESTED_SOURCES, OUTPUT_CLASSES, TorchRunnerConfig, resolve_configs, routed_values,
    setup_torch_configs,
)
from scripts.studies.runner_fields import setting
from tests.config_contract import roundtrip_problems, route_problems, source_problems
from tests.strategies import DEPENDENT, INDEPENDENT, runner_configs, runner_field_names

pytestmark = pytest.mark.contract


@given(runner_configs())
@example(TorchRunnerConfig(gradient_clip_val=1.0, gradient_clip_algorithm="agc",
                           scheduler="WarmupCosine", epochs=5, lr_warmup_epochs=2, lr_min_ratio=0.1))
def test_every_routed_field_round_trips_into_each_output(cfg):
    assert roundtrip_problems(cfg, resolve_configs) == []


@given(runner_configs())
def test_shared_fields_equal_input_in_both_outputs(cfg):
    training, execution = setup_torch_configs(cfg)
    for name in ("gradient_clip_val", "learning_rate"):
        assert getattr(training, name) == getattr(execution, name) == getattr(cfg, name)


def test_every_runner_field_has_a_route():
    assert route_problems(TorchRunnerConfig) == []


def test_every_output_field_has_a_source():
    assert source_problems(TorchRunnerConfig, OUTPUT_CLASSES, NESTED_SOURCES) == []


def test_strategies_draw_every_runner_field():
    assert set(INDEPENDENT) | set(DEPENDENT) == set(runner_field_names())


def test_strategy_moves_every_field_off_its_default():
    default, moved = TorchRunnerConfig(), set()

    @settings(max_examples=100, phases=[Phase.generate], database=None)
    @given(runner_configs())
    def collect(cfg):
        moved.update(n for n in runner_field_names() if getattr(cfg, n) != getattr(default, n))

    collect()
    assert set(runner_field_names()) - moved == set()


@given(runner_configs())
def test_setup_is_pure_deterministic_and_frozen(cfg):
    before = copy.deepcopy(cfg)
    first, second = resolve_configs(cfg), resolve_configs(cfg)
    assert cfg == before
    assert first == second
    for resolved in first.values():
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(resolved, dataclasses.fields(resolved)[0].name, None)


# --- meta-tests: the gate goes red on a deliberately broken mapping ------------------------

def test_gate_names_a_runner_field_without_route():
    broken = dataclasses.make_dataclass(
        "BrokenRunner", [("forgotten_knob", int, dataclasses.field(default=3))],
        bases=(TorchRunnerConfig,), frozen=True, kw_only=True)
    problems = route_problems(broken)
    assert problems == ["BrokenRunner.forgotten_knob has no declared route"]


def test_gate_names_a_route_to_a_missing_output_field():
    broken = dataclasses.make_dataclass(
        "BrokenRunner", [("warmup_steps", int, setting(0, to=("training",), help="x"))],
        bases=(TorchRunnerConfig,), frozen=True, kw_only=True)
    problems = source_problems(broken, OUTPUT_CLASSES, NESTED_SOURCES)
    assert any("BrokenRunner.warmup_steps" in p and "TrainingConfig" in p for p in problems), problems


def test_gate_names_an_output_field_without_source():
    broken_training = dataclasses.make_dataclass(
        "TrainingConfig", [("lr_cycle_length", int, dataclasses.field(default=5))],
        bases=(TrainingConfig,), frozen=True, kw_only=True)
    outputs = OUTPUT_CLASSES | {"training": broken_training}
    problems = source_problems(TorchRunnerConfig, outputs, NESTED_SOURCES)
    assert len(problems) == 1 and "TrainingConfig.lr_cycle_length has no source" in problems[0]


def _upstream_bug_setup(cfg):
    """The upstream bug: the clip value is parsed and stored for execution, dropped for training."""
    values = routed_values(cfg, "training")
    values.pop("gradient_clip_val")
    training = TrainingConfig(model=ModelConfig(**routed_values(cfg, "model")), **values)
    return training, runner.PyTorchExecutionConfig(**routed_values(cfg, "execution"))


def test_gate_names_a_value_dropped_inside_setup():
    cfg = TorchRunnerConfig(gradient_clip_val=1.0)
    problems = roundtrip_problems(cfg, lambda c: resolve_configs(c, setup=_upstream_bug_setup))
    assert problems and all("gradient_clip_val" in p for p in problems)
    assert any("training holds None" in p for p in problems)
    assert any("shared field gradient_clip_val disagrees" in p for p in problems)


def test_runner_defaults_equal_the_defaults_of_every_config_they_reach():
    """One default per setting: a config built on its own behaves like one resolved from the runner."""
    runner_defaults = TorchRunnerConfig()
    for dest, cls in OUTPUT_CLASSES.items():
        own = cls()
        for name, value in routed_values(runner_defaults, dest).items():
            assert getattr(own, name) == value, f"{cls.__name__}.{name} default differs from the runner's"
