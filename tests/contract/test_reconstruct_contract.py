"""The reconstruction command's settings: declared like the runner's, each routed value arrives in
the execution config prediction reads, and the command line round-trips every drawn config."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, strategies as st

from ptycho_torch.config import FIELD_RULES, PyTorchExecutionConfig
from scripts.grid_lines_reconstruct import (
    REQUIRED, ReconstructConfig, main, parse_config, reconstruct_flags, resolve, setup_execution_config,
)
from scripts.studies.runner_cli import config_to_argv
from scripts.studies.runner_fields import route_of
from tests.helpers import roundtrip_problems, route_problems, source_problems
from tests.strategies import paths, valid_values

FIELDS = [f.name for f in dataclasses.fields(ReconstructConfig)]


@st.composite
def reconstruct_configs(draw) -> ReconstructConfig:
    values = {name: draw(paths if name in REQUIRED else valid_values(FIELD_RULES[name])) for name in FIELDS}
    return ReconstructConfig(**values)


@given(reconstruct_configs())
def test_every_routed_field_arrives_in_the_execution_config(cfg):
    assert roundtrip_problems(cfg, resolve) == []


ROUTED = ("accelerator", "infer_batch_size", "num_threads", "precision")  # what prediction reads


def test_every_field_has_a_route_and_every_route_a_field():
    assert route_problems(ReconstructConfig) == []
    problems = source_problems(ReconstructConfig, {"execution": PyTorchExecutionConfig}, {})
    # execution fields prediction does not read keep their defaults: only routes to missing fields count
    assert [p for p in problems if "has no source" not in p] == []
    routed = {f.name for f in dataclasses.fields(ReconstructConfig) if route_of(f).to}
    assert routed == set(ROUTED)


def test_defaults_equal_the_execution_configs_defaults():
    cfg = ReconstructConfig(checkpoint="c.ckpt", test_npz="t.npz")
    assert setup_execution_config(cfg) == PyTorchExecutionConfig()


@given(reconstruct_configs())
def test_argv_from_config_parses_back_to_equal_config(cfg):
    parsed, _ = parse_config(config_to_argv(cfg))
    assert parsed == cfg


@given(reconstruct_configs(), st.sampled_from(ROUTED), st.data())
def test_changing_one_flag_changes_the_execution_config(cfg, name, data):
    value = data.draw(valid_values(FIELD_RULES[name]).filter(lambda v: v != getattr(cfg, name)))
    changed = dataclasses.replace(cfg, **{name: value})
    assert getattr(setup_execution_config(changed), name) == value
    assert setup_execution_config(changed) != setup_execution_config(cfg)


def test_missing_required_paths_exit_2_naming_both_flags(capsys):
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "--checkpoint=None: must be given" in err and "--test-npz=None: must be given" in err


@pytest.mark.parametrize("argv, flag", [
    (["--infer-batch-size", "0"], "--infer-batch-size"),
    (["--num-threads", "-1"], "--num-threads"),
    (["--accelerator", "tpu"], "--accelerator"),
    (["--precision", "bf16"], "--precision"),
    (["--checkpoint", ""], "--checkpoint"),
])
def test_invalid_values_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--checkpoint", "c.ckpt", "--test-npz", "t.npz", *argv])
    assert stopped.value.code == 2 and flag in capsys.readouterr().err


def test_dry_run_prints_the_resolved_settings_and_touches_no_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", "--checkpoint", "c.ckpt", "--test-npz", "t.npz", "--infer-batch-size", "5"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["execution"]["infer_batch_size"] == 5 and shown["reconstruct"]["checkpoint"] == "c.ckpt"
    assert list(tmp_path.iterdir()) == []


def test_flags_are_derived_from_the_declarations():
    assert reconstruct_flags() == {name: "--" + name.replace("_", "-") for name in FIELDS}
