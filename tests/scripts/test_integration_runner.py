"""End to end through the command lines: clipping evidence, bad input, determinism."""

from __future__ import annotations

import csv
import json

import pytest

from scripts.studies import grid_lines_compare_wrapper as wrapper
from scripts.studies import grid_lines_torch_runner as runner
from tests.helpers import TINY_ARGV as TINY
from tests.helpers import TINY_WRAPPER_ARGV as TINY_WRAPPER
from tests.helpers import FINISHED, history

pytestmark = pytest.mark.integration

def assert_clip_evidence(rows: list[dict], clip: float) -> None:
    assert rows and all(float(r["grad_norm_postclip"]) <= clip * (1 + 1e-6) for r in rows)
    assert any(float(r["grad_norm_preclip"]) > clip for r in rows), "the clip never bit"


@pytest.mark.parametrize("gridsize", [1, 2])
def test_runner_cli_clips_every_step(tmp_path, evidence, capsys, gridsize):
    clip = 1e-3
    assert runner.main([*TINY, "--output-dir", str(tmp_path / "run"), "--grad-clip", str(clip),
                        "--log-grad-norm", "--gridsize", str(gridsize)]) in FINISHED  # 12 tiny steps clipped
    # at 1e-3 leave the gridsize-2 reconstruction independent of the patterns: reported collapsed, exit 3
    assert "results in" in capsys.readouterr().out
    run = tmp_path / "run"
    evidence.keep(run)
    assert_clip_evidence(history(run), clip)
    for name in ("config.json", "metrics.json", "history.csv", "recon.npz", "reconstruction.png", "training.png"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "checkpoints" / "last.ckpt").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["gradient_clip_val"] == config["execution"]["gradient_clip_val"] == clip
    assert config["training"]["model"]["gridsize"] == gridsize
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["mean"]["amplitude"]["ssim"] <= 1 and metrics["mean"]["phase"]["ssim"] is not None


@pytest.mark.parametrize("gridsize", [1, 2])
def test_wrapper_torch_grad_clip_reaches_every_architecture(tmp_path, evidence, gridsize):
    clip = 1e-3
    out = tmp_path / "compare"
    assert wrapper.main([*TINY_WRAPPER, "--architectures", "cnn,fno", "--output-dir", str(out),
                         "--torch-grad-clip", str(clip), "--torch-grad-clip-algorithm", "norm",
                         "--torch-gridsize", str(gridsize)]) in FINISHED
    evidence.keep(out)
    for arch in ("cnn", "fno"):
        evidence.keep(out / "runs" / arch, arch)
        assert_clip_evidence(history(out / "runs" / arch), clip)
        config = json.loads((out / "runs" / arch / "config.json").read_text())
        assert config["training"]["model"]["architecture"] == arch and config["training"]["model"]["gridsize"] == gridsize
    with open(out / "metrics_table.csv", newline="") as handle:
        assert [r["architecture"] for r in csv.DictReader(handle) if r["row"] == "run"] == ["cnn", "fno"]
    assert (out / "comparison.png").stat().st_size > 0 and "| cnn |" in (out / "metrics_table.md").read_text()


def test_clip_algorithms_give_different_histories_and_config_records_it(tmp_path, evidence):
    runs = {}
    for algorithm in ("value", "norm"):
        run = tmp_path / algorithm
        assert runner.main([*TINY, "--output-dir", str(run), "--grad-clip", "1e-4",
                            "--gradient-clip-algorithm", algorithm]) == 0
        evidence.keep(run, algorithm)
        assert json.loads((run / "config.json").read_text())["training"]["gradient_clip_algorithm"] == algorithm
        runs[algorithm] = [(r["loss"], r["grad_norm_postclip"]) for r in history(run)]
    assert runs["value"] != runs["norm"]


def test_the_training_picture_shows_the_clip_that_ran(tmp_path, monkeypatch):
    from ptycho_torch import plots

    drawn = {}
    monkeypatch.setattr(plots, "plot_training", lambda path, rows, clip, algorithm: drawn.update(
        path=path, steps=len(rows), clip=clip, algorithm=algorithm))
    assert runner.main([*TINY, "--output-dir", str(tmp_path / "run"), "--grad-clip", "0.5",
                        "--gradient-clip-algorithm", "value"]) == 0
    assert drawn["clip"] == 0.5 and drawn["algorithm"] == "value" and drawn["steps"] > 0
    assert drawn["path"] == tmp_path / "run" / "training.png"


def test_same_seed_gives_identical_metrics(tmp_path):
    for name in ("a", "b"):
        assert runner.main([*TINY, "--output-dir", str(tmp_path / name), "--seed", "5"]) == 0
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()


# --- bad input: exit 2, the problem named, the user's files untouched ------------------------

def _run_bad(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        code = runner.main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_npz_exits_2_naming_the_file(tmp_path, capsys):
    err = _run_bad([*TINY, "--train-npz", str(tmp_path / "nope.npz"), "--test-npz", str(tmp_path / "nope2.npz"),
                    "--output-dir", str(tmp_path / "out")], capsys)
    assert "nope.npz" in err and not (tmp_path / "out").exists()


def test_corrupt_npz_exits_2_and_leaves_it_untouched(tmp_path, capsys, tiny_npz):
    corrupt = tmp_path / "train.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    err = _run_bad([*TINY, "--train-npz", str(corrupt), "--test-npz", str(tiny_npz[1]),
                    "--output-dir", str(tmp_path / "out")], capsys)
    assert "train.npz" in err and corrupt.read_bytes() == b"PK\x03\x04 not really a zip"
    assert not (tmp_path / "out").exists()


def test_invalid_flag_value_exits_2_naming_the_flag(tmp_path, capsys):
    err = _run_bad([*TINY, "--grad-clip", "-1", "--output-dir", str(tmp_path / "out")], capsys)
    assert "--grad-clip" in err and not (tmp_path / "out").exists()


def test_non_empty_output_dir_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    err = _run_bad([*TINY, "--output-dir", str(out)], capsys)
    assert "--overwrite" in err and "not empty" in err
    assert [p.name for p in out.iterdir()] == ["precious.txt"] and (out / "precious.txt").read_text() == "keep me"
