"""Round trip and drift gate: every runner setting reaches the configs it is routed to."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import Phase, assume, example, given, settings, strategies as st

from ptycho_torch.config import FIELD_RULES, ConfigError, ModelConfig, TrainingConfig, check_shared_fields
from scripts.studies import grid_lines_torch_runner as runner
from scripts.studies.grid_lines_torch_runner import (
    NESTED_SOURCES, OUTPUT_CLASSES, TorchRunnerConfig, resolve_configs, routed_values,
    setup_torch_configs,
)
from scripts.studies.runner_fields import route_of, setting
from tests.helpers import examples, roundtrip_problems, route_problems, source_problems
from tests.strategies import DEPENDENT, INDEPENDENT, runner_configs, runner_field_names, valid_values

@given(runner_configs())
@example(TorchRunnerConfig(gradient_clip_val=1.0, gradient_clip_algorithm="agc",
                           scheduler="WarmupCosine", epochs=5, lr_warmup_epochs=2, lr_min_ratio=0.1))
def test_every_routed_field_round_trips_and_shared_fields_agree_and_pass_the_guard(cfg):
    assert roundtrip_problems(cfg, resolve_configs) == []
    training, execution = setup_torch_configs(cfg)
    for name in ("gradient_clip_val", "learning_rate"):
        assert getattr(training, name) == getattr(execution, name) == getattr(cfg, name)
    check_shared_fields(training, execution)


def test_every_runner_field_has_a_route():
    assert route_problems(TorchRunnerConfig) == []


def test_every_output_field_has_a_source():
    assert source_problems(TorchRunnerConfig, OUTPUT_CLASSES, NESTED_SOURCES) == []


def test_strategies_draw_every_runner_field():
    assert set(INDEPENDENT) | set(DEPENDENT) == set(runner_field_names())


def test_strategy_moves_every_field_off_its_default():
    default, moved = TorchRunnerConfig(), set()

    @settings(max_examples=max(50, examples(100)), phases=[Phase.generate], database=None)
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


@pytest.mark.parametrize("kwargs, words", [
    (dict(to=("trainng",)), "unknown destination(s) ['trainng']"),
    (dict(to=()), "a runner-only setting needs a one-line reason (why=...)"),
], ids=["unknown-destination", "runner-only-without-why"])
def test_a_setting_declared_with_an_unknown_destination_or_no_reason_is_refused(kwargs, words):
    with pytest.raises(ValueError) as err:
        setting(0, help="x", **kwargs)
    assert words in str(err.value)
    setting(0, to=(), help="x", why="the runner's own")  # runner-only with a reason: fine


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


@given(runner_configs(), st.data())
def test_changing_one_runner_flag_changes_each_config_it_reaches(cfg, data):
    name = data.draw(st.sampled_from(runner_field_names()))
    value = data.draw(valid_values(FIELD_RULES[name]).filter(lambda v: v != getattr(cfg, name)))
    try:
        changed = dataclasses.replace(cfg, **{name: value})
    except ConfigError:
        assume(False)  # the other value breaks a cross-field rule of this draw
    before, after = resolve_configs(cfg), resolve_configs(changed)
    route = route_of(next(f for f in dataclasses.fields(cfg) if f.name == name))
    for dest in route.to:
        assert before[dest] != after[dest], f"{name} did not change the {dest} config"
    assert route.to or changed != cfg


def test_every_inert_declaration_names_a_real_setting():
    from ptycho_torch.config import _ACTIVITY, all_settings

    assert {name for name, _, _ in _ACTIVITY} - all_settings() == set()


def test_the_contract_suite_imports_no_torch():
    """`pytest -m contract` stays fast: its modules, strategies, helpers and conftests never load torch."""
    modules = ["conftest", "tests.conftest", "tests.helpers", "tests.strategies"] + [
        f"tests.contract.{p.stem}" for p in sorted(Path(__file__).parent.glob("test_*.py"))]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
            "heavy = sorted(m for m in ('torch', 'lightning') if m in sys.modules); print(heavy); "
            "sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout + done.stderr


def test_runner_help_groups_flags_by_destination(capsys):
    with pytest.raises(SystemExit):
        runner.main(["--help"])
    text = capsys.readouterr().out
    titles = ["paths and run safety:", "model:", "training:", "simulated data", "execution"]
    positions = [text.index(t) for t in titles]
    assert positions == sorted(positions)
    sections = dict(zip(titles, [text[a:b] for a, b in zip(positions, positions[1:] + [len(text)])]))
    assert "--grad-clip" in sections["training:"] and "--object-size" in sections["simulated data"]
    assert "--output-dir" in sections["paths and run safety:"] and "--precision" in sections["execution"]
    assert "--fno-modes" in sections["model:"]
