"""The stand-alone dataset command: same flags as the runner's dataset settings, safe on reruns."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_torch.npz_data import load_npz
from scripts import grid_lines_datagen

TINY = ["--N", "16", "--object-size", "32", "--n-lines", "20", "--n-train-images", "1", "--test-stride", "8",
        "--no-progress"]


def test_datagen_writes_a_loadable_pair_and_refuses_to_overwrite(tmp_path, capsys):
    assert grid_lines_datagen.main([*TINY, "--output-dir", str(tmp_path)]) == 0
    train, test = load_npz(tmp_path / "train.npz", "train"), load_npz(tmp_path / "test.npz", "test")
    assert train.N == test.N == 16 and test.YY_ground_truth is not None
    before = (tmp_path / "train.npz").read_bytes()
    assert grid_lines_datagen.main([*TINY, "--data-seed", "9", "--output-dir", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "train.npz").read_bytes() == before


def test_datagen_matches_the_runner_simulation_for_the_same_flags(tmp_path):
    from ptycho_torch.workflow import load_or_simulate
    from scripts.studies.grid_lines_torch_runner import parse_config, plan_of

    assert grid_lines_datagen.main([*TINY, "--output-dir", str(tmp_path / "a")]) == 0
    cfg, _ = parse_config([f for f in TINY if f != "--no-progress"] + ["--no-enable-progress-bar"])
    train, _ = load_or_simulate(plan_of(cfg), tmp_path / "b")
    assert np.array_equal(train.diffraction, load_npz(tmp_path / "a" / "train.npz", "train").diffraction)


def test_datagen_bad_value_exits_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grid_lines_datagen.main(["--N", "16", "--object-size", "8", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "--object-size" in capsys.readouterr().err


def test_a_given_setting_the_simulation_cannot_use_is_warned_of_as_the_runner_does(tmp_path, capsys):
    """--probe-defocus beside a probe file: silent, though the runner warns of exactly this."""
    np.savez(tmp_path / "probe.npz", probeGuess=np.ones((16, 16), np.complex64))
    assert grid_lines_datagen.main([*TINY, "--probe-npz", str(tmp_path / "probe.npz"), "--probe-defocus", "3",
                                    "--output-dir", str(tmp_path / "out")]) == 0
    assert ("warning: --probe-defocus=3.0 has no effect in this run: the probe comes from a file"
            in capsys.readouterr().err)
    assert grid_lines_datagen.main([*TINY, "--probe-defocus", "3", "--output-dir", str(tmp_path / "other")]) == 0
    assert "has no effect" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["name-too-long", "nul-character"])
def test_an_unusable_output_path_is_refused_with_exit_2_under_overwrite_too(tmp_path, capsys, kind):
    from tests.ptycho_torch.test_output_folder import unusable

    out = unusable(tmp_path, kind)
    assert grid_lines_datagen.main([*TINY, "--output-dir", str(out), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: output_dir=")


def test_the_help_names_the_command_as_it_is_run():
    assert grid_lines_datagen.build_parser().prog == "python -m scripts.grid_lines_datagen"
