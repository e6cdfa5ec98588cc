"""Sweeps in the compare wrapper: a grid of settings x seeds run in parallel processes, a table whose
summaries and clip-bite fractions follow from the runs, a restart that skips finished cells, commands
for a job array, refusals before any run; and collapse detection."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from ptycho_torch import cpu_settings
from ptycho_torch.outcome import COLLAPSE_SPREAD, collapse_reason
from scripts.studies import grid_lines_compare_wrapper as wrapper
from tests.helpers import TINY_ARGV, TINY_WRAPPER_ARGV

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
WRAPPER = [sys.executable, "-m", "scripts.studies.grid_lines_compare_wrapper"]
GRID = ["--architectures", "cnn", "--sweep", "torch-grad-clip=none,0.01", "--sweep", "torch-grad-clip-algorithm=norm,agc",
        "--seeds", "0,1"]


def table(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics_table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def number(text: str) -> float | None:
    return float(text) if text else None


def bite_fraction(history_csv: Path) -> float | None:
    """Recomputed here with numpy, apart from the table's code."""
    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    pre = np.array([float(r["grad_norm_preclip"]) if r["grad_norm_preclip"] else np.nan for r in rows])
    post = np.array([float(r["grad_norm_postclip"]) if r["grad_norm_postclip"] else np.nan for r in rows])
    applied = ~np.isnan(pre) & ~np.isnan(post) & (np.array([r["skipped"] for r in rows]) == "False")
    return float(np.mean(post[applied] < pre[applied])) if applied.any() else None


@pytest.fixture(scope="session")
def swept(tmp_path_factory, worker_id) -> Path:
    """One tiny study for the whole session: made by the first worker that needs it (under a lock
    shared by the pytest-xdist workers), read by the others."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if worker_id != "master" else root
    out = root / "sweep_grid"
    with study_lock(out):
        if not (out / "metrics_table.csv").exists():
            done = subprocess.run([*WRAPPER, *TINY_WRAPPER_ARGV, *GRID, "--jobs", "2", "--output-dir", str(out)],
                                  cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
            assert done.returncode in (0, 3), done.stderr[-3000:]  # 3: a tiny run may collapse
    return out


def study_lock(out: Path) -> FileLock:
    """Held while the shared study is made or changed, and while it is read."""
    return FileLock(str(out) + ".lock")


def test_a_2x2_sweep_over_2_seeds_in_2_processes_gives_8_runs_and_a_matching_table(swept):
    with study_lock(swept):
        rows = table(swept)
    runs = [r for r in rows if r["row"] == "run"]
    assert len(runs) == 8 and {r["seed"] for r in runs} == {"0", "1"}
    assert {(r["gradient_clip_val"], r["gradient_clip_algorithm"]) for r in runs} == {
        ("", "norm"), ("", "agc"), ("0.01", "norm"), ("0.01", "agc")}
    for run in runs:
        folder = swept / "runs" / run["cell"] / f"seed{run['seed']}"
        config = json.loads((folder / "config.json").read_text())
        assert config["training"]["seed"] == int(run["seed"]) and config["execution"]["num_threads"] >= 1
        metrics = json.loads((folder / "metrics.json").read_text())
        assert number(run["amplitude_ssim"]) == metrics["mean"]["amplitude"]["ssim"] and run["status"] == metrics["status"]
    for cell in {r["cell"] for r in runs}:
        members = [r for r in runs if r["cell"] == cell]
        mean, spread = (next(r for r in rows if r["row"] == kind and r["cell"] == cell) for kind in ("mean", "std"))
        for score in ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_frc50"):
            values = [number(r[score]) for r in members]
            assert number(mean[score]) == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert number(spread[score]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        statuses = sorted(r["status"] for r in members)
        assert mean["status"] == " ".join(f"{s}={statuses.count(s)}" for s in sorted(set(statuses)))
    assert (swept / "sweep.png").stat().st_size > 0 and len(os.listdir(swept / "logs")) == 8


def test_the_tables_clip_bite_fraction_is_the_one_each_history_gives(swept):
    with study_lock(swept):
        runs = [r for r in table(swept) if r["row"] == "run"]
    for run in runs:
        expected = bite_fraction(swept / "runs" / run["cell"] / f"seed{run['seed']}" / "history.csv")
        assert number(run["clip_bite_fraction"]) == pytest.approx(expected)
    assert {number(r["clip_bite_fraction"]) for r in runs if not r["gradient_clip_val"]} == {0.0}
    assert all(number(r["clip_bite_fraction"]) > 0 for r in runs if r["gradient_clip_val"])


def test_the_same_command_again_reruns_nothing_and_summarize_rebuilds_the_table(swept):
    with study_lock(swept):
        same_command_again(swept)


def same_command_again(swept: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in swept.glob("runs/*/*/metrics.json")}
    again = subprocess.run([*WRAPPER, *TINY_WRAPPER_ARGV, *GRID, "--jobs", "2", "--output-dir", str(swept)],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode in (0, 3), again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in swept.glob("runs/*/*/metrics.json")} == before
    rows = table(swept)
    (swept / "metrics_table.csv").unlink()
    assert wrapper.main([*TINY_WRAPPER_ARGV, *GRID, "--jobs", "2", "--output-dir", str(swept), "--summarize"]) in (0, 3)
    assert table(swept) == rows


def test_a_sweep_killed_midway_and_restarted_skips_its_finished_cells(tmp_path):
    out = tmp_path / "killed"
    command = [*WRAPPER, *TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-learning-rate=0.01,0.02",
               "--seeds", "0,1", "--output-dir", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list(out.glob("runs/*/*/metrics.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.json")}
    assert 2 <= len(finished) < 4
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 3), done.stderr[-2000:]
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # not rerun
    assert len(list(out.glob("runs/*/*/metrics.json"))) == 4 and len(table(out)) == 4 + 2 * 2


def test_emit_commands_writes_one_runnable_runner_command_per_cell(tmp_path):
    out = tmp_path / "emitted"
    argv = [*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-batch-size=4,8", "--output-dir", str(out)]
    assert wrapper.main([*argv, "--emit-commands"]) == 0
    lines = (out / "commands.txt").read_text().splitlines()
    assert len(lines) == 2 and all("grid_lines_torch_runner --config" in line for line in lines)
    assert not (out / "runs").exists()
    done = subprocess.run(lines[0], shell=True, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 3), done.stderr[-2000:]
    status = wrapper.main([*argv, "--summarize"])
    rows = [r for r in table(out) if r["row"] == "run"]
    assert status == 3 and [r["status"] != "missing" for r in rows] == [True, False]  # one run made, one missing
    assert [r["batch_size"] for r in rows] == ["4", "8"]


@pytest.mark.parametrize("argv, named", [
    (["--sweep", "torch-grad-clips=1,2"], "did you mean 'torch-grad-clip'"),
    (["--sweep", "torch-grad-clip=1,x"], "expected a number or none"),
    (["--sweep", "torch-grad-clip=-1"], "--torch-grad-clip=-1.0: must be"),
    (["--sweep", "torch-optimizer=adam,adam"], "a value is given twice"),
    (["--sweep", "torch-grad-clip=0,1,none"], "two values mean the same run (none and 0 both mean off)"),
    (["--sweep", "torch-grad-clip=1.0,1"], "--sweep='torch-grad-clip=1.0,1': a value is given twice"),
    (["--architectures", "cnn", "--sweep", "torch-momentum=0.5,0.8"],
     "--sweep torch-momentum: has no effect in any cell of this study (only sgd uses momentum)"),
    (["--architectures", ""], "--architectures='': must be distinct names"),
    (["--architectures", "cnn,,fno"], "--architectures='cnn,,fno': must be distinct names"),  # not cnn,fno unseen
    (["--sweep", "torch-optimizer"], "expected FLAG=v1,v2"),
    (["--sweep", "output-dir=a,b"], "not a setting that can be swept"),
    (["--sweep", "torch-architecture=cnn", "--architectures", "fno"], "say the same"),
    (["--sweep", "torch-epochs=1", "--sweep", "torch-epochs=2"], "swept twice"),
    (["--seeds", "0,x"], "--seeds='0,x'"),
    (["--seeds", "0,-1"], "--seeds='0,-1': seed -1 must be an integer in 0.."),
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "\u00b2"], "--jobs: expected an integer >= 1, got '\u00b2'"),
    (["--jobs", "9" * 5000], "--jobs: expected an integer >= 1"),
    (["--seeds", "0,0"], "--seeds='0,0': a seed is given twice"),  # the same run twice, one folder
    (["--seeds", "1_0"], "--seeds='1_0': expected comma-separated integers"),  # int() would read 10
    (["--seeds", "\u0663"], "--seeds='\u0663': expected comma-separated integers"),  # int() would read 3
    (["--sweep", "torch-probe-mask=maybe,true"], "--sweep='torch-probe-mask=maybe,true': expected true or false, "
                                                 "got 'maybe'"),
    (["--sweep", "torch-scheduler=WarmupCosine", "--torch-lr-warmup-epochs", "5"], "--torch-lr-warmup-epochs=5"),
], ids=["unknown", "bad-value", "rule", "twice", "clip-off-twice", "clip-twice", "inert", "no-architectures", "empty-architecture", "no-values", "output-dir",
        "architectures", "swept-twice", "seeds", "negative-seed", "jobs", "jobs-superscript", "jobs-5000-digits",
        "seed-twice", "seed-separator", "seed-other-script", "unknown-boolean-word", "cross-rule"])
def test_invalid_sweeps_are_refused_before_any_run(tmp_path, capsys, argv, named):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as stopped:
        wrapper.main([*TINY_WRAPPER_ARGV, *argv, "--output-dir", str(out)])
    assert stopped.value.code == 2 and named in capsys.readouterr().err
    assert not out.exists()


def test_a_seed_given_twice_is_refused_by_a_dry_run_too(capsys):
    with pytest.raises(SystemExit) as stopped:
        wrapper.main([*TINY_WRAPPER_ARGV, "--seeds", "0,0", "--dry-run"])
    assert stopped.value.code == 2 and "a seed is given twice" in capsys.readouterr().err


def test_a_setting_given_and_also_swept_is_named_as_unused_in_a_warning(capsys):
    study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--torch-grad-clip", "5",
                                    "--sweep", "torch-grad-clip=1,2", "--torch-seed", "4", "--seeds", "0,1",
                                    "--dry-run"])
    err = capsys.readouterr().err
    assert "warning: --torch-grad-clip=5.0 is not used: each cell takes a value from its --sweep" in err
    assert "warning: --torch-seed=4 is not used: each cell takes a value from --seeds" in err
    assert "--torch-epochs" not in err  # given, not swept: it acts in every cell
    assert sorted((cfg.gradient_clip_val, cfg.seed) for cfg in study.configs) == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_a_nine_digit_jobs_count_is_a_plain_integer():
    # plain_int takes up to 9 digits (no 5000-digit strings): the 9th digit itself is accepted
    assert wrapper.parse_study([*TINY_WRAPPER_ARGV, "--jobs", "123456789", "--dry-run"])[1].jobs == 123456789


def test_a_swept_float_names_its_cell_folder_as_written_not_as_a_python_float(tmp_path):
    # --sweep torch-grad-clip=none,1 -> runs/grad-clip=1, the word the user typed (not grad-clip=1.0)
    study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-grad-clip=none,1",
                                    "--output-dir", str(tmp_path)])
    assert [cfg.output_dir.relative_to(tmp_path).as_posix() for cfg in study.configs] == [
        "runs/grad-clip=none", "runs/grad-clip=1"]


def test_a_sweep_that_acts_in_only_some_cells_is_warned_of_naming_them(tmp_path, capsys):
    """fno modes beside the cnn: the cnn cells repeat one run per value."""
    assert wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn,fno", "--sweep", "torch-fno-modes=2,4",
                         "--output-dir", str(tmp_path / "never"), "--dry-run"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "--sweep torch-fno-modes" in line]
    assert warned == ["warning: --sweep torch-fno-modes has no effect in the cells architecture=cnn_fno-modes=2, "
                      "architecture=cnn_fno-modes=4 (only fno and hybrid are spectral): they repeat one run for each "
                      "of its values"]
    assert wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "fno", "--sweep", "torch-fno-modes=2,4",
                         "--output-dir", str(tmp_path / "never"), "--dry-run"]) == 0
    assert "--sweep torch-fno-modes" not in capsys.readouterr().err


def test_emitted_commands_refuse_a_folder_whose_path_would_break_their_lines(tmp_path, capsys):
    out = tmp_path / "a\nb"
    with pytest.raises(SystemExit) as stopped:
        wrapper.main([*TINY_WRAPPER_ARGV, "--output-dir", str(out), "--emit-commands"])
    assert stopped.value.code == 2 and "a path with a line break cannot be one" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("folder", ["absent", "empty", "a-run"])
def test_summarize_refuses_a_folder_that_holds_no_study_and_writes_nothing(tmp_path, capsys, folder):
    out = tmp_path / folder
    if folder != "absent":
        out.mkdir()
    if folder == "a-run":
        (out / "metrics.json").write_text("{}")
    before = sorted(out.rglob("*")) if out.exists() else None
    assert wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--output-dir", str(out), "--summarize"]) == 2
    assert "no study recorded there" in capsys.readouterr().err
    assert (sorted(out.rglob("*")) if out.exists() else None) == before


def test_a_folder_holding_another_study_is_refused_without_overwrite(swept, capsys):
    with study_lock(swept):
        status = wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-batch-size=4,8",
                               "--output-dir", str(swept)])
    assert status == 2 and "holds another study (its sweep.json lists other cells)" in capsys.readouterr().err


def test_a_folder_whose_sweep_record_is_damaged_is_refused_saying_so(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text('{"cells": [{"output_dir": ')
    before = snapshot_of(tmp_path)
    assert wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--output-dir", str(tmp_path)]) == 2
    assert "its sweep.json does not read as a study's record" in capsys.readouterr().err
    assert snapshot_of(tmp_path) == before


def snapshot_of(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- collapse ------------------------------------------------------------------------------------

def test_collapse_reason_names_a_constant_amplitude_or_phase_and_nothing_else():
    rng = np.random.default_rng(0)
    truth = (1 + 0.3 * rng.random((2, 12, 12))) * np.exp(1j * rng.random((2, 12, 12)))
    assert collapse_reason(truth, truth) is None
    assert collapse_reason(truth * 0.5 * np.exp(0.3j), truth) is None  # scaled and shifted: not constant
    flat = truth.copy()
    flat[1] = 0.8 * np.exp(1j * np.angle(truth[1]))
    assert collapse_reason(flat, truth).startswith("object 1: the reconstructed amplitude is constant")
    wrapped = np.abs(truth) * np.exp(1j * (np.pi - 1e-4 * (rng.random((2, 12, 12)) > 0.5)))  # +-pi across the cut
    assert "phase is constant" in collapse_reason(wrapped, truth)
    barely = np.abs(truth) * np.exp(1j * 2 * COLLAPSE_SPREAD * np.angle(truth))  # 2 % of the truth's spread
    assert collapse_reason(barely, truth) is None
    zero_phase_truth = np.abs(truth).astype(complex)
    assert collapse_reason(np.abs(truth) * np.exp(0.2j), zero_phase_truth) is None  # nothing to tell a collapse by


def test_a_model_forced_to_a_constant_output_is_reported_collapsed_with_exit_3(tmp_path, monkeypatch, capsys):
    import torch

    from ptycho_torch.model import PtychoPINN
    from scripts.studies import grid_lines_torch_runner as runner

    def constant(self, diffraction):  # depends on the weights (zero gradient) but its value never does
        return torch.full(diffraction.shape, 0.7 + 0.1j, dtype=torch.complex64) + 0 * self.generator(diffraction)

    monkeypatch.setattr(PtychoPINN, "forward", constant)
    out = tmp_path / "constant"
    argv = [*TINY_ARGV, "--optimizer", "adamw", "--weight-decay", "0.5", "--output-dir", str(out)]
    assert runner.main(argv) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "collapsed" and metrics["collapsed"] is True
    assert "amplitude is constant" in metrics["status_reason"]
    assert "collapsed" in capsys.readouterr().err


def test_a_gridsize_2_model_whose_output_ignores_its_input_is_reported_collapsed(tmp_path, monkeypatch, capsys):
    import torch

    from ptycho_torch.model import PtychoPINN
    from scripts.studies import grid_lines_torch_runner as runner

    def one_value_per_place(self, diffraction):  # (B, 4, N, N): each place in the group its own constant
        values = torch.tensor([0.3, 0.5 + 0.2j, 0.7, 0.9 - 0.1j], dtype=torch.complex64).view(1, 4, 1, 1)
        return values.expand(diffraction.shape).clone() + 0 * self.generator(diffraction)

    monkeypatch.setattr(PtychoPINN, "forward", one_value_per_place)
    out = tmp_path / "fixed"
    assert runner.main([*TINY_ARGV, "--gridsize", "2", "--optimizer", "adamw", "--weight-decay", "0.5",
                        "--output-dir", str(out)]) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "collapsed" and "does not depend on the measured patterns" in metrics["status_reason"]


def test_every_cell_gets_its_own_folder_even_when_values_share_a_file_name(tmp_path, capsys):
    from scripts.studies.sweep import Sweep, cells_of

    probes = Sweep("probe_npz", "probe-npz", (Path("a/probe.npz"), Path("b/probe.npz")))
    clips = Sweep("gradient_clip_val", "torch-grad-clip", (None, 0.1, 1.0))
    cells = cells_of([Sweep("architecture", "torch-architecture", ("cnn",)), probes, clips], seeds=(0, 1))
    assert len({cell.folder for cell in cells}) == len(cells) == 12
    assert Path("runs/probe-npz=1-probe.npz_grad-clip=0.1/seed1") in {cell.folder for cell in cells}
    assert wrapper.main([*TINY_WRAPPER_ARGV, "--architectures", "cnn,fno", "--seeds", "3", "--output-dir",
                         str(tmp_path / "x"), "--dry-run"]) == 0
    folders = [run["runner"]["output_dir"] for run in json.loads(capsys.readouterr().out)]
    assert folders == [str(tmp_path / "x" / "runs" / arch / "seed3") for arch in ("cnn", "fno")]


def test_in_processes_a_restart_resumes_a_cell_from_its_checkpoint_and_reruns_an_empty_one(tmp_path):
    out = tmp_path / "partial"
    command = [*WRAPPER, *TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-batch-size=4,8,2",
               "--jobs", "2", "--output-dir", str(out)]
    assert subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, timeout=300).returncode in (0, 3)
    cells = sorted((out / "runs").iterdir())
    finished = {cell.name: (cell / "metrics.json").read_bytes() for cell in cells}
    kept = cells[0] / "metrics.json"
    kept_time = kept.stat().st_mtime_ns
    (cells[1] / "metrics.json").unlink()  # stopped after its last epoch-end checkpoint: resumed
    shutil.rmtree(cells[2] / "checkpoints")  # stopped before its first epoch ended: run again
    (cells[2] / "config.json").unlink()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 3), done.stderr[-2000:]
    assert kept.stat().st_mtime_ns == kept_time
    logs = {path.stem: path.read_text() for path in (out / "logs").iterdir()}
    assert "Restoring states from the checkpoint" in logs[cells[1].name]
    assert "Restoring states" not in logs[cells[2].name] and "results in" in logs[cells[2].name]
    assert {cell.name: (cell / "metrics.json").read_bytes() for cell in cells} == finished  # same results
    assert len([r for r in table(out) if r["row"] == "run" and r["status"] != "missing"]) == 3


def test_in_one_process_a_restart_runs_every_cell_it_can_when_one_cells_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "partial"
    argv = [*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-batch-size=4,8,2", "--output-dir", str(out)]
    assert wrapper.main(argv) in (0, 3)
    cells = sorted((out / "runs").iterdir())
    (cells[0] / "metrics.json").unlink()  # resumed from its checkpoint
    (cells[1] / "metrics.json").unlink()
    (cells[1] / "checkpoints" / "last.ckpt").write_bytes(b"")  # refused: an empty checkpoint
    shutil.rmtree(cells[2] / "checkpoints")  # run again
    (cells[2] / "metrics.json").unlink()
    capsys.readouterr()
    assert wrapper.main(argv) == 3
    err = capsys.readouterr().err
    assert f"cell runs/{cells[1].name} refused" in err and "last.ckpt" in err
    assert f"run {cells[1].name} missing: no metrics.json" in err
    assert [(cell / "metrics.json").is_file() for cell in cells] == [True, False, True]
    statuses = {r["cell"]: r["status"] for r in table(out) if r["row"] == "run"}
    assert [statuses[cell.name] == "missing" for cell in cells] == [False, True, False]


def test_summarize_refuses_overwrite_and_a_restart_may_change_jobs_and_path_spelling(tmp_path, capsys, monkeypatch):
    out = tmp_path / "study"
    argv = [*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-batch-size=4,8"]
    assert wrapper.main([*argv, "--jobs", "2", "--output-dir", str(out), "--emit-commands"]) == 0
    with pytest.raises(SystemExit) as stopped:
        wrapper.main([*argv, "--output-dir", str(out), "--summarize", "--overwrite"])
    assert stopped.value.code == 2 and "--overwrite would remove them" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the same study, its folder spelled relative, one job instead of two
    assert wrapper.main([*argv, "--jobs", "1", "--output-dir", "study", "--emit-commands"]) == 0
    assert len((out / "commands.txt").read_text().splitlines()) == 2


@pytest.mark.parametrize(("cores", "threads"), [(4, 2), (2, 1), (1, 1), (7, 3)])
def test_parallel_jobs_share_the_usable_cores(tmp_path, monkeypatch, cores, threads):
    """``--jobs K`` gives each cell its share of the cores the runs can use (affinity within the CPU
    quota: ``cpu_settings.usable_cores``), at least one thread; a count given explicitly stays."""
    monkeypatch.setattr(cpu_settings, "usable_cores", lambda: cores)
    argv = [*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep", "torch-batch-size=4,8", "--jobs", "2"]

    def cell_threads(out: Path) -> list[int]:
        return [json.loads(path.read_text())["runner"]["num_threads"] for path in sorted((out / "cells").glob("*.json"))]
    assert wrapper.main([*argv, "--output-dir", str(tmp_path / "shared"), "--emit-commands"]) == 0
    assert cell_threads(tmp_path / "shared") == [threads, threads]
    assert wrapper.main([*argv, "--torch-num-threads", "5", "--output-dir", str(tmp_path / "given"),
                         "--emit-commands"]) == 0
    assert cell_threads(tmp_path / "given") == [5, 5]


def test_collapse_ignores_the_overall_amplitude_scale():
    rng = np.random.default_rng(1)
    truth = (1 + 0.3 * rng.random((1, 10, 10))) * np.exp(1j * rng.random((1, 10, 10)))
    assert collapse_reason(truth * 1e-3, truth) is None  # right structure, another scale: scored after alignment


def test_records_nested_past_the_parsers_limit_read_as_unreadable_not_as_a_crash(tmp_path):
    from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig
    from scripts.studies.sweep import FRESH, cell_state, recorded_folders, same_sweep

    (tmp_path / "sweep.json").write_text("[" * 100_000)
    (tmp_path / "config.json").write_text("[" * 100_000)
    cfg = TorchRunnerConfig(output_dir=tmp_path)
    assert same_sweep(tmp_path, [cfg]) is False and recorded_folders(tmp_path) == []
    assert cell_state(cfg) == FRESH
    for odd in ('{"runner": [1]}', '{"runner": "text"}'):  # records of the wrong shape read as unreadable too
        (tmp_path / "config.json").write_text(odd)
        (tmp_path / "sweep.json").write_text('{"cells": [[1], "text", {"output_dir": 3}]}')
        assert cell_state(cfg) == FRESH and same_sweep(tmp_path, [cfg]) is False and recorded_folders(tmp_path) == []


@pytest.mark.parametrize("damage", ["[" * 100_000, "[1]", '{"status": "ok"}'], ids=["nested", "a-list", "fields-missing"])
def test_a_runs_damaged_records_make_its_row_missing_and_a_damaged_baseline_record_no_rows(tmp_path, capsys, damage):
    from scripts.studies.baselines import BASELINE_RECORD, read_baseline_rows
    from scripts.studies.study_table import run_row

    (tmp_path / "metrics.json").write_text(damage)
    (tmp_path / "config.json").write_text("{}")
    row = run_row(tmp_path, "cnn", None, {})
    assert row["status"] == "missing" and "cannot be read" in row["status_reason"]
    (tmp_path / BASELINE_RECORD).parent.mkdir()
    (tmp_path / BASELINE_RECORD).write_text(damage)
    assert read_baseline_rows(tmp_path) == [] and "cannot be read" in capsys.readouterr().err


def finished_run(folder: Path, cfg, **metrics_changes) -> None:
    """The records a finished run of ``cfg`` leaves (config.json, metrics.json, history.csv, a checkpoint)."""
    from ptycho_torch.config import to_jsonable

    folder.mkdir(parents=True, exist_ok=True)
    scores = {"ssim": 0.9, "psnr": 30.0, "mae": 0.1, "frc50": 0.25}
    metrics = {"architecture": "cnn", "status": "ok", "status_reason": None, "collapsed": False, "optimizer_steps": 3,
               "final_train_loss": 0.5, "phase_seam_ratio": 1.0,
               "mean": {"amplitude": dict(scores), "phase": dict(scores)}, **metrics_changes}
    (folder / "config.json").write_text(json.dumps({"runner": to_jsonable(cfg), "training": {"seed": 0}}))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text("grad_norm_preclip,grad_norm_postclip,skipped\n1.0,1.0,False\n")
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")


@pytest.mark.parametrize("damage", ["metrics not JSON", "no history", "NaN score", "text score"])
def test_a_finished_cell_whose_records_do_not_read_back_is_run_again(tmp_path, damage):
    """A restart kept such a cell as finished and listed it missing forever (only --overwrite of the
    whole study got it run again); an edited 'ok' record with a NaN score was averaged as ok."""
    from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig
    from scripts.studies.study_table import run_row
    from scripts.studies.sweep import FINISHED, FRESH, RESUMABLE, cell_state

    cfg = TorchRunnerConfig(output_dir=tmp_path / "run")
    finished_run(cfg.output_dir, cfg)
    assert cell_state(cfg) == FINISHED
    if damage == "metrics not JSON":
        (cfg.output_dir / "metrics.json").write_text('{"status": "ok", ')
    elif damage == "no history":
        (cfg.output_dir / "history.csv").unlink()
    else:
        finished_run(cfg.output_dir, cfg, mean={"amplitude": {"ssim": float("nan") if damage == "NaN score" else "high",
                                                              "psnr": 30.0, "mae": 0.1, "frc50": 0.25},
                                                "phase": {"ssim": 0.9, "psnr": 30.0, "mae": 0.1, "frc50": 0.25}})
    assert cell_state(cfg) == FRESH  # rerun (its folder overwritten), not resumed: the run had completed
    assert run_row(cfg.output_dir, "cnn", None, {})["status"] == "missing"
    (cfg.output_dir / "metrics.json").unlink()
    assert cell_state(cfg) == RESUMABLE  # an epoch-end checkpoint and no results yet


def test_a_cells_folder_holding_a_run_of_other_settings_is_missing_from_the_table(tmp_path):
    """--summarize after a job array averaged a run started there by hand with another learning rate."""
    import dataclasses

    from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig
    from scripts.studies.sweep import Cell, FRESH, cell_state

    cell = Cell((("learning_rate", 0.01),), None, Path("runs") / "learning-rate=0.01")
    cfg = TorchRunnerConfig(output_dir=tmp_path / cell.folder, learning_rate=0.01)
    finished_run(cfg.output_dir, cfg)
    assert wrapper.cell_row(tmp_path, cell, cfg)["status"] == "ok"
    finished_run(cfg.output_dir, dataclasses.replace(cfg, learning_rate=0.001))
    row = wrapper.cell_row(tmp_path, cell, cfg)
    assert row["status"] == "missing" and "records other settings than this cell's" in row["status_reason"]
    assert row["cell"] == "learning-rate=0.01" and row["learning_rate"] == 0.01
    assert cell_state(cfg) == FRESH


def test_a_study_moved_elsewhere_is_the_same_study_with_its_finished_runs(tmp_path):
    """sweep.json and each run's config.json held absolute folders: a study moved (from scratch space,
    say) was refused as "another study", with --overwrite (deleting every run) as the advice."""
    from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig
    from scripts.studies.sweep import FINISHED, Cell, SWEEP_RECORD, cell_config, cell_state, record_of, \
        recorded_folders, same_sweep

    cells = [Cell((("learning_rate", rate),), seed, Path("runs") / f"learning-rate={rate}" / f"seed{seed}")
             for rate in (0.01, 0.02) for seed in (0, 1)]

    def configs(root: Path):
        return [cell_config(cell, {}, root, lambda **values: TorchRunnerConfig(**values)) for cell in cells]

    first = tmp_path / "scratch" / "study"
    for cfg in configs(first):
        finished_run(cfg.output_dir, cfg)
    first.joinpath(SWEEP_RECORD).write_text(json.dumps(record_of(configs(first), first)))
    moved = tmp_path / "home" / "study"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert same_sweep(moved, configs(moved)) is True
    assert recorded_folders(moved) == [cell.folder for cell in cells]
    assert [cell_state(cfg) for cfg in configs(moved)] == [FINISHED] * 4
    assert same_sweep(moved, configs(moved)[:3]) is False  # another set of cells is still another study


def test_a_record_written_with_absolute_folders_still_reads_in_place_and_never_reaches_outside(tmp_path):
    from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig
    from scripts.studies.sweep import SWEEP_RECORD, recorded_folders, same_sweep

    cfg = TorchRunnerConfig(output_dir=tmp_path / "runs" / "cnn")
    from ptycho_torch.config import to_jsonable
    old = {k: v for k, v in to_jsonable(cfg).items() if k not in ("overwrite", "num_threads", "enable_progress_bar")}
    (tmp_path / SWEEP_RECORD).write_text(json.dumps({"cells": [old]}))  # as records were written before
    assert same_sweep(tmp_path, [cfg]) is True and recorded_folders(tmp_path) == [Path("runs/cnn")]
    (tmp_path / SWEEP_RECORD).write_text(json.dumps({"cells": [{**old, "output_dir": "../../elsewhere"}]}))
    assert recorded_folders(tmp_path) == []  # an --overwrite removes nothing outside the study


def test_a_cells_process_is_named_killed_by_its_signal_and_its_log_keeps_every_attempt(tmp_path, capsys, monkeypatch):
    """It said "exited with status -9"; a restart truncated the log of the attempt it continued."""
    study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--output-dir", str(tmp_path)])
    attempts = iter([-9, 0])

    class Finished:
        def __init__(self, command, stdout, **_):
            stdout.write(f"attempt {' '.join(command[-3:])}\n")
            stdout.flush()
            self.returncode = next(attempts)

        def poll(self):
            return self.returncode

    monkeypatch.setattr(wrapper.subprocess, "Popen", Finished)
    for _ in range(2):
        wrapper.run_in_processes(study, [wrapper.FRESH], [0], tmp_path, jobs=2)
    err = capsys.readouterr().err
    assert f"warning: cell {study.cells[0].folder} was killed by SIGKILL; see" in err and "status -9" not in err
    (log,) = (tmp_path / "logs").iterdir()
    assert len(log.read_text().splitlines()) == 2  # both attempts
    wrapper._check_cell_exit(tmp_path, study.cells[0], 1)
    assert f"cell {study.cells[0].folder} exited with status 1" in capsys.readouterr().err


def test_emitted_commands_and_cell_files_name_absolute_folders_to_run_from_anywhere(tmp_path, monkeypatch):
    """A job array's working directory is its own: relative folders and data files did not resolve."""
    from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig
    from scripts.studies.sweep import FINISHED, cell_state

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dat").mkdir()
    for name in ("train", "test"):
        (tmp_path / "dat" / f"{name}.npz").write_bytes(b"")  # only named here
    argv = [*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--output-dir", "study", "--train-npz", "dat/train.npz",
            "--test-npz", "dat/test.npz"]
    assert wrapper.main([*argv, "--emit-commands"]) == 0
    (line,) = (tmp_path / "study" / "commands.txt").read_text().splitlines()
    assert str(tmp_path / "study" / "cells" / "cnn.json") in line
    (cell_file,) = (tmp_path / "study" / "cells").iterdir()
    runner = json.loads(cell_file.read_text())["runner"]
    assert runner["output_dir"] == str(tmp_path / "study" / "runs" / "cnn")
    assert runner["train_npz"] == str(tmp_path / "dat" / "train.npz") and runner["test_npz"] == str(tmp_path / "dat" / "test.npz")
    # a run made from the cell file (absolute paths) is the cell's run (relative ones in the wrapper's)
    cfg = TorchRunnerConfig(output_dir=Path("study/runs/cnn"), train_npz=Path("dat/train.npz"),
                            test_npz=Path("dat/test.npz"), **{k: v for k, v in runner.items() if k not in (
                                "output_dir", "train_npz", "test_npz")})
    finished_run(cfg.output_dir, TorchRunnerConfig(**{**runner, "output_dir": Path(runner["output_dir"]),
                                                      "train_npz": Path(runner["train_npz"]),
                                                      "test_npz": Path(runner["test_npz"])}))
    assert cell_state(cfg) == FINISHED


def test_the_comparison_figure_shows_the_first_seeds_of_at_most_8_cells(tmp_path, monkeypatch):
    from ptycho_torch import plots

    drawn = []
    monkeypatch.setattr(plots, "plot_comparison", lambda path, truth, recons: drawn.append(list(recons)))
    monkeypatch.setattr(plots, "plot_sweep", lambda *args: None)
    objects = np.ones((1, 4, 4), np.complex64)
    for count in (8, 9):
        out = tmp_path / str(count)
        rates = ",".join(f"0.0{k}" for k in range(1, count + 1))
        study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--sweep",
                                        f"torch-learning-rate={rates}", "--output-dir", str(out)])
        for cfg in study.configs:
            cfg.output_dir.mkdir(parents=True)
            np.savez(cfg.output_dir / "recon.npz", recon=objects, ground_truth=objects)
        wrapper.write_study_results(out, study, one_dataset=True)
    assert [len(recons) for recons in drawn] == [8]


def test_in_one_process_the_progress_bar_advances_one_step_per_cell_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ptycho_torch import workflow

    study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--seeds", "0,1,2",
                                    "--output-dir", str(tmp_path)])
    steps = []

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            steps.append(n)

    monkeypatch.setattr(wrapper, "_progress", lambda total, done: steps.append((total, done)) or Bar())
    monkeypatch.setattr(workflow, "run", lambda plan, data=None: None)
    plans = [SimpleNamespace(simulation=None, train_npz=tmp_path / "train.npz")] * 3  # files given: nothing simulated
    wrapper.run_in_process(study, plans, [1, 2], tmp_path, one_dataset=True)
    assert steps == [(3, 1), 1, 1]  # one cell finished before


def test_stopping_the_cells_sends_each_sigterm_before_waiting_for_any():
    events = []

    class Cell:
        def __init__(self, name):
            self.name = name

        def send_signal(self, signum):
            events.append((self.name, signum))

        def wait(self, timeout=None):
            events.append((self.name, "ended"))

    wrapper._stop([Cell("a"), Cell("b")])
    assert events == [("a", signal.SIGTERM), ("b", signal.SIGTERM), ("a", "ended"), ("b", "ended")]


def test_a_cell_refused_by_its_own_checks_stops_the_study_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "never"
    argv = [*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--torch-probe-mask",
            "--sweep", "torch-probe-mask-diameter=12,0.5", "--output-dir", str(out)]  # 0.5 px: no probe is left
    assert wrapper.main(argv) == 2
    assert "--torch-probe-mask-diameter=0.5: the probe mask" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("jobs, warned", [(2, False), (3, True)])
def test_more_jobs_than_usable_cores_are_warned_of(monkeypatch, capsys, jobs, warned):
    from ptycho_torch import cpu_settings

    monkeypatch.setattr(cpu_settings, "usable_cores", lambda: 2)
    study, _ = wrapper.parse_study([*TINY_WRAPPER_ARGV, "--architectures", "cnn", "--seeds", "0,1,2",
                                    "--jobs", str(jobs), "--dry-run"])
    err = capsys.readouterr().err
    assert ("--jobs 3 runs 3 training processes at once on this machine's 2 usable core(s)" in err) == warned, err
    assert {cfg.num_threads for cfg in study.configs} == {1}  # cores // jobs, at least one
