"""``--config PATH``: runner settings from a JSON file (plain or a run's config.json), flags on top."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

from ptycho_torch.config import to_jsonable
from scripts.studies import grid_lines_compare_wrapper as wrapper
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, main, parse_config, resolved_json
from tests.helpers import examples
from tests.strategies import runner_configs


def written(folder: Path, content) -> Path:
    path = folder / "settings.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@settings(max_examples=examples(100))
@given(cfg=runner_configs())
def test_a_config_json_read_back_gives_the_same_runner_config(cfg):
    with tempfile.TemporaryDirectory() as folder:
        for content in (resolved_json(cfg), to_jsonable(cfg)):  # a run's config.json, and a plain mapping
            read, _ = parse_config(["--config", str(written(Path(folder), content))])
            assert read == dataclasses.replace(cfg, overwrite=False)  # overwrite: the flag's alone


def test_flags_given_override_the_file_and_the_rest_comes_from_it(tmp_path, capsys):
    path = written(tmp_path, {"epochs": 3, "learning_rate": 0.01, "gradient_clip_val": 0.5})
    assert main(["--config", str(path), "--epochs", "5", "--dry-run"]) == 0
    runner = json.loads(capsys.readouterr().out)["runner"]
    assert (runner["epochs"], runner["learning_rate"], runner["gradient_clip_val"]) == (5, 0.01, 0.5)
    assert runner["batch_size"] == TorchRunnerConfig().batch_size  # neither file nor flag: the default


def test_unknown_names_are_refused_each_with_the_closest_valid_name(tmp_path, capsys):
    path = written(tmp_path, {"lerning_rate": 0.1, "epochs": 2, "zzz": 1})
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--config=" in err and "Traceback" not in err
    assert "'lerning_rate' (did you mean 'learning_rate'?)" in err and "unknown setting 'zzz'" in err


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('"text"', "must hold a JSON object"),
    ('{"epochs": 0}', "--epochs=0: must be"),  # values pass the flags' rules
    ('{"grad_clip": 1.0}', "did you mean"),  # a flag alias is not a setting name
    ("[" * 100_000, "nested too deeply"),
    ('{"epochs": 2, "epochs": 3}', "names 'epochs' twice"),  # JSON keeps the last silently
    ('{"runner": {"seed": 1, "seed": 2}}', "names 'seed' twice"),
    ('{"epochs": 1' + "0" * 5000 + "}", "is not JSON (Exceeds the limit"),  # Python's int() refuses > 4300 digits
], ids=["malformed", "list", "string", "bad value", "alias", "deep", "repeated", "repeated-in-record", "huge-int"])
def test_bad_files_exit_2_naming_the_problem(tmp_path, capsys, content, words):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(written(tmp_path, content)), "--dry-run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and words in err and "Traceback" not in err


def test_two_settings_files_exit_2_instead_of_using_the_last(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text('{"epochs": 3}')
    second.write_text('{"epochs": 5}')
    for command in (lambda argv: main([*argv, "--dry-run"]), wrapper.parse_study):
        with pytest.raises(SystemExit) as exit_info:
            command(["--config", str(first), "--config", str(second)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "--config is given twice" in err and "b.json" in err, err


def test_a_missing_file_exits_2_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path / "absent.json"), "--dry-run"])
    assert exit_info.value.code == 2 and "absent.json" in capsys.readouterr().err


def test_the_wrapper_takes_a_run_config_but_keeps_its_own_architectures_and_folder(tmp_path):
    recorded = resolved_json(TorchRunnerConfig(architecture="fno", epochs=4, output_dir=Path("elsewhere"),
                                               overwrite=True, fno_modes=6))
    study, _ = wrapper.parse_study(["--config", str(written(tmp_path, recorded)), "--architectures", "cnn,hybrid",
                                  "--output-dir", str(tmp_path / "cmp"), "--torch-epochs", "2"])
    rows = study.configs
    assert [r.architecture for r in rows] == ["cnn", "hybrid"]
    assert all(r.epochs == 2 and r.fno_modes == 6 and not r.overwrite for r in rows)
    assert rows[0].output_dir == tmp_path / "cmp" / "runs" / "cnn"


def test_a_files_overwrite_is_not_used_and_a_non_empty_folder_stays_refused(tmp_path, capsys):
    # a run's config.json records the --overwrite it ran with; running that record again into another
    # finished run's folder must not replace that run's files
    folder = tmp_path / "finished"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"seed": 7}')
    recorded = written(tmp_path, resolved_json(TorchRunnerConfig(overwrite=True, epochs=1)))
    cfg, _ = parse_config(["--config", str(recorded)])
    assert cfg.overwrite is False
    assert main(["--config", str(recorded), "--output-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "its overwrite=true is not used" in err and "folder is not empty" in err
    assert (folder / "metrics.json").read_text() == '{"seed": 7}' and sorted(p.name for p in folder.iterdir()) == [
        "metrics.json"]
    cfg, _ = parse_config(["--config", str(recorded), "--overwrite"])  # the flag still gives consent
    assert cfg.overwrite is True and "not used" not in capsys.readouterr().err


def test_the_names_a_command_does_not_take_from_a_file_are_warned_of_with_their_values(tmp_path, capsys):
    plain = written(tmp_path, {"architecture": "fno", "output_dir": "elsewhere", "overwrite": "yes", "epochs": 2})
    study, _ = wrapper.parse_study(["--config", str(plain), "--architectures", "cnn", "--output-dir",
                                    str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert [r.architecture for r in study.configs] == ["cnn"] and study.configs[0].epochs == 2
    for words in ('its architecture="fno" is not used; a study runs the architectures of its --architectures',
                  'its output_dir="elsewhere" is not used', 'its overwrite="yes" is not used'):
        assert words in err, err
    parse_config(["--config", str(plain), "--overwrite"])  # the runner takes architecture and output_dir from it
    err = capsys.readouterr().err
    assert "is not used" not in err, err  # and the flag gave the consent


def test_a_nul_character_in_a_files_path_setting_exits_2_naming_the_flag(tmp_path, capsys):
    for name, flag in (("output_dir", "--output-dir"), ("train_npz", "--train-npz"), ("probe_npz", "--probe-npz")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", str(written(tmp_path, {name: str(tmp_path / "a\0b")})), "--dry-run"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"{flag}=" in err and "NUL" in err and "Traceback" not in err


def test_an_empty_path_in_a_file_exits_2_naming_the_flag_instead_of_meaning_this_folder(tmp_path, capsys):
    for name, flag in (("output_dir", "--output-dir"), ("train_npz", "--train-npz"), ("probe_npz", "--probe-npz")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", str(written(tmp_path, {name: ""})), "--dry-run"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"{flag}=" in err and "non-empty path" in err, err


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_as_settings_file_exits_2_instead_of_waiting(tmp_path, capsys, kind):
    import os

    path = tmp_path / "settings.json"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer forever
    else:
        path = Path("/dev/zero")  # reading it would never end
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "is a pipe, socket or device" in err and "--config=" in err
