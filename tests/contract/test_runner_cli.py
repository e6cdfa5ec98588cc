"""The runner's command line: derived from the field declarations, round-trips configs."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest
from hypothesis import assume, given, strategies as st

from ptycho_torch.config import ConfigError
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, main, parse_config, runner_flags
from scripts.studies.runner_cli import config_to_argv
from tests.strategies import runner_configs, runner_field_names

@given(runner_configs())
def test_argv_from_config_parses_back_to_equal_config(cfg):
    parsed, _ = parse_config(config_to_argv(cfg))
    assert parsed == cfg


def test_no_flags_gives_every_default():
    assert parse_config([])[0] == TorchRunnerConfig()


@given(runner_configs(), st.sampled_from(runner_field_names()))
def test_an_omitted_flag_gives_that_fields_default(cfg, name):
    default = getattr(TorchRunnerConfig(), name)
    try:
        expected = dataclasses.replace(cfg, **{name: default})
    except ConfigError:
        assume(False)  # the default breaks a cross-field rule of this draw
    flag = runner_flags()[name]
    argv = [a for a in config_to_argv(expected)
            if a.split("=")[0] not in (flag, "--no-" + flag[2:])]
    assert len(argv) == len(runner_field_names()) - 1
    assert parse_config(argv)[0] == expected


def test_grad_clip_flag_reaches_both_outputs_through_dry_run(capsys):
    assert main(["--dry-run", "--grad-clip", "1.0", "--gradient-clip-algorithm", "agc"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["training"]["gradient_clip_val"] == shown["execution"]["gradient_clip_val"] == 1.0
    assert shown["training"]["gradient_clip_algorithm"] == "agc"
    assert set(shown) == {"runner", "training", "execution", "simulation"}


def test_optional_fields_accept_none(capsys):
    main(["--dry-run", "--grad-clip", "none", "--train-npz", "none", "--probe-mask-diameter", "None"])
    shown = json.loads(capsys.readouterr().out)["runner"]
    assert shown["gradient_clip_val"] is None and shown["train_npz"] is None
    assert shown["probe_mask_diameter"] is None


BAD_ARGV = [
    pytest.param(["--grad-clip", "-1"], "--grad-clip", id="negative-clip"),
    pytest.param(["--grad-clip", "nan"], "--grad-clip", id="nan-clip"),
    pytest.param(["--grad-clip", "inf"], "--grad-clip", id="inf-clip"),
    pytest.param(["--grad-clip", "one"], "--grad-clip", id="clip-not-a-number"),
    pytest.param(["--gradient-clip-algorithm", "l1"], "--gradient-clip-algorithm", id="unknown-algorithm"),
    pytest.param(["--architecture", "resnet"], "--architecture", id="unknown-architecture"),
    pytest.param(["--N", "48"], "--N", id="N-not-power-of-two"),
    pytest.param(["--epochs", "0"], "--epochs", id="zero-epochs"),
    pytest.param(["--epochs", "2.5"], "--epochs", id="fractional-epochs"),
    pytest.param(["--learning-rate", "0"], "--learning-rate", id="zero-lr"),
    pytest.param(["--precision", "64-true"], "--precision", id="unknown-precision"),
    # trains in spawned processes whose records never come back: every run crashed after fitting
    pytest.param(["--strategy", "ddp_spawn"], "--strategy", id="ddp-spawn"),
    pytest.param(["--architecture", "fno", "--N", "32", "--fno-modes", "17"], "--fno-modes", id="modes-above-N-over-2"),
    pytest.param(["--scheduler", "WarmupCosine", "--epochs", "3", "--lr-warmup-epochs", "3"],
                 "--lr-warmup-epochs", id="warmup-not-below-epochs"),
    pytest.param(["--scheduler", "ReduceLROnPlateau", "--val-fraction", "0.2", "--plateau-min-lr", "0.001"],
                 "--plateau-min-lr", id="plateau-floor-not-below-the-rate"),  # the scheduler could never act
    pytest.param(["--output-dir", ""], "--output-dir", id="empty-output-dir"),
    # int() and float() read these; the wrapper's own integer flags did not: one reading for all
    pytest.param(["--epochs", "\u0665"], "--epochs", id="arabic-indic-digit"),
    pytest.param(["--epochs", "1_000"], "--epochs", id="digit-separator"),
    pytest.param(["--learning-rate", "1_0.5"], "--learning-rate", id="float-digit-separator"),
    pytest.param(["--learning-rate", "\u0660.\u0665"], "--learning-rate", id="float-arabic-indic-digits"),
    pytest.param(["--grad-clip", "1e-320"], "--grad-clip", id="subnormal-clip"),  # read as 0 (off) in a fit
    pytest.param(["--no-such-flag"], "--no-such-flag", id="unknown-flag"),
]


@pytest.mark.parametrize("argv, flag", BAD_ARGV)
def test_invalid_value_exits_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dry-run", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_two_invalid_flags_are_both_named(capsys):
    with pytest.raises(SystemExit):
        main(["--dry-run", "--epochs", "0", "--batch-size", "0"])
    err = capsys.readouterr().err
    assert "--epochs=0" in err and "--batch-size=0" in err


_tokens = st.one_of(
    st.sampled_from([flag for flag in runner_flags().values()] + ["--no-probe-mask", "--help"]),
    st.sampled_from(["0", "-1", "1e309", "nan", "none", "cnn", "agc", "2", "64", "0.5", "", "--"]),
    st.text(max_size=6),
)


@given(st.lists(_tokens, max_size=8))
def test_random_argv_never_raises_a_traceback(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--dry-run", *argv])
        except SystemExit as exc:
            code = exc.code
    assert code in (0, 2), err.getvalue()


def test_dry_run_touches_no_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", "--output-dir", "fresh/run"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_config_modules_import_no_torch():
    code = ("import sys, ptycho_torch.config, scripts.studies.grid_lines_torch_runner; "
            "heavy = sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module, argv", [
    ("scripts.studies.grid_lines_torch_runner", ["--dry-run", "--grad-clip", "0.5"]),
    ("scripts.studies.grid_lines_compare_wrapper", ["--help"]),
    ("scripts.grid_lines_datagen", ["--help"]),
    ("scripts.grid_lines_reconstruct", ["--help"]),
], ids=["runner", "wrapper", "datagen", "reconstruct"])
def test_every_command_runs_under_a_profiler_that_keeps_its_module_out_of_sys_modules(module, argv):
    """``python -m cProfile -m COMMAND`` runs the command's module in a namespace of its own: its settings'
    annotations must still resolve."""
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", os.devnull, "-m", module, *argv],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if module.endswith("runner"):
        assert json.loads(done.stdout)["training"]["gradient_clip_val"] == 0.5


def test_the_summary_line_prints_null_scores_instead_of_crashing(capsys):
    from scripts.studies.grid_lines_torch_runner import report

    metrics = {"status": "ok", "mean": {"amplitude": {"ssim": None, "psnr": None}}}
    assert report(TorchRunnerConfig(output_dir="out"), metrics) == 0
    assert "SSIM null, PSNR null dB" in capsys.readouterr().out


def test_a_ddp_rank_other_than_0_reports_nothing_and_exits_0(capsys):
    from scripts.studies.grid_lines_torch_runner import report

    assert report(TorchRunnerConfig(output_dir="out"), None) == 0  # rank 0 reports the run's status
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("command", ["runner", "wrapper", "datagen"])
@pytest.mark.parametrize("argv", [["--output-dir", ""], ["--output-dir", "  "], ["--epoch", "3"], ["--over"]],
                         ids=["empty-output-dir", "blank-output-dir", "abbreviated-flag", "abbreviated-switch"])
def test_every_command_refuses_empty_output_dirs_and_abbreviated_flags(command, argv, capsys):
    from scripts import grid_lines_datagen
    from scripts.studies import grid_lines_compare_wrapper

    mains = {"runner": main, "wrapper": grid_lines_compare_wrapper.main, "datagen": grid_lines_datagen.main}
    extra = ["--output-dir", "somewhere"] if command == "datagen" and argv[0] != "--output-dir" else []
    with pytest.raises(SystemExit) as exit_info:
        mains[command]([*extra, "--dry-run", *argv] if command != "datagen" else [*extra, *argv])
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err
