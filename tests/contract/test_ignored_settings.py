"""Settings the user gives that cannot act in the run are named, once each, with the reason."""

from __future__ import annotations

import json

from pathlib import Path

import pytest

from scripts.studies.grid_lines_torch_runner import (
    TorchRunnerConfig, inert_runner_settings, main, parse_config, plan_of,
)


def warnings_of(argv, capsys) -> tuple[list[str], dict]:
    """The warning lines of a dry run, and the config.json a run of the same flags would write."""
    assert main([*argv, "--dry-run"]) == 0
    err = capsys.readouterr().err
    cfg, namespace = parse_config(argv)
    return [line for line in err.splitlines() if line.startswith("warning:")], plan_of(cfg, namespace.given).record


@pytest.mark.parametrize("argv, flag, why", [
    (["--momentum", "0.5"], "--momentum=0.5", "only sgd uses momentum"),
    (["--fno-modes", "4"], "--fno-modes=4", "only fno and hybrid are spectral"),
    (["--lr-gamma", "0.5", "--scheduler", "WarmupCosine"], "--lr-gamma=0.5", "only the Exponential scheduler"),
    # pinn uses the probe, but the diameter only sizes a mask that is off
    (["--probe-mask-diameter", "6"], "--probe-mask-diameter=6.0",
     "the probe mask is off, or supervised training at gridsize 1 never uses the probe"),
])
def test_a_given_setting_without_effect_is_warned_once_with_why_and_recorded(argv, flag, why, capsys):
    lines, record = warnings_of(argv, capsys)
    assert lines == [f"warning: {flag} has no effect in this run: {why}"]
    assert record["ignored_settings"] == {flag[2:].split("=")[0].replace("-", "_"): why}


def test_defaults_and_settings_that_act_are_not_warned(capsys):
    assert warnings_of([], capsys)[0] == []  # momentum is inert under adam, but the user did not give it
    assert warnings_of(["--momentum", "0.5", "--optimizer", "sgd"], capsys)[0] == []
    assert warnings_of(["--N", "32", "--object-size", "64"], capsys)[0] == []  # simulated data: N acts


def test_settings_from_a_config_file_count_as_given(tmp_path, capsys):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"momentum": 0.25}))
    assert warnings_of(["--config", str(path)], capsys)[0] == [
        "warning: --momentum=0.25 has no effect in this run: only sgd uses momentum"]


def test_a_run_records_the_ignored_settings_it_was_given():
    cfg = TorchRunnerConfig(momentum=0.5)
    assert plan_of(cfg, given=["momentum", "epochs"]).record["ignored_settings"] == {"momentum": "only sgd uses momentum"}
    assert plan_of(cfg).record["ignored_settings"] == {}


def test_a_setting_that_reaches_several_configs_is_inert_only_when_all_of_them_ignore_it():
    from_files = TorchRunnerConfig(train_npz=Path("train.npz"), test_npz=Path("test.npz"))
    inert = inert_runner_settings(from_files)
    assert inert["n_lines"] == "the data come from the NPZ files"  # simulation only
    assert "N" not in inert  # the simulation ignores N, but the model is built with it
    assert "N" not in inert_runner_settings(TorchRunnerConfig())


def test_the_wrapper_warns_only_of_settings_no_architecture_of_the_comparison_can_use(capsys):
    from scripts.studies import grid_lines_compare_wrapper as wrapper

    assert wrapper.main(["--architectures", "cnn,fno", "--torch-fno-modes", "4", "--torch-momentum", "0.3",
                         "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert lines == ["warning: --torch-momentum=0.3 has no effect in this run: only sgd uses momentum"]
    study, ns = wrapper.parse_study(["--architectures", "cnn,fno", "--torch-fno-modes", "4"])
    assert [plan_of(cfg, ns.given).record["ignored_settings"] for cfg in study.configs] == [
        {"fno_modes": "only fno and hybrid are spectral"}, {}]  # each run records its own


def test_a_run_config_json_counts_as_given_only_where_it_differs_from_the_defaults(tmp_path, capsys):
    recorded = TorchRunnerConfig(momentum=0.5, epochs=3)  # momentum chosen (inert under adam); epochs acts
    path = tmp_path / "config.json"
    path.write_text(json.dumps(plan_of(recorded, given=["momentum", "epochs"]).record))
    assert warnings_of(["--config", str(path)], capsys)[0] == [
        "warning: --momentum=0.5 has no effect in this run: only sgd uses momentum"]


@pytest.mark.parametrize("gridsize, acts", [(1, False), (2, True)])
def test_the_probe_mask_acts_in_supervised_training_where_the_overlap_merge_weighs_by_the_probe(gridsize, acts):
    """Supervised training never looks at the probe at gridsize 1; at gridsize 2 the merge's weights
    are the masked probe's intensity (the mask was called inert there, and sweeping it refused)."""
    import torch

    from ptycho_torch.model import PtychoPINN
    from scripts.studies.grid_lines_torch_runner import resolve_configs

    cfg = TorchRunnerConfig(training_procedure="supervised", gridsize=gridsize, probe_mask=True,
                            probe_mask_diameter=6.0, N=16, object_size=48)
    inert = inert_runner_settings(cfg)
    assert ("probe_mask" not in inert and "probe_mask_diameter" not in inert) == acts
    if acts:
        probe = torch.ones(16, 16, dtype=torch.complex64)
        weights = [PtychoPINN(resolve_configs(c)["training"], probe).overlap_weights for c in (
            cfg, TorchRunnerConfig(training_procedure="supervised", gridsize=2, N=16, object_size=48))]
        assert not torch.equal(*weights)  # the mask reaches the merge
