"""--resume: a run killed (SIGKILL, a real process) after epoch k and resumed ends bit for bit as
the uninterrupted run; a resumed run may grow its epochs; everything else is refused, untouched."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, main, resolved_json
from tests.helpers import FINISHED, TINY_ARGV

ROOT = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, "-m", "scripts.studies.grid_lines_torch_runner"]
KILLED = [sys.executable, "-m", "tests.scripts.killed_runner"]
# Threads fixed: the automatic count samples the machine, and a different count sums in another order.
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
# State that must survive the kill: a plateau scheduler (its counters), clipping, a validation split.
STATEFUL = ["--seed", "5", "--scheduler", "ReduceLROnPlateau", "--plateau-patience", "0", "--plateau-factor", "0.7",
            "--grad-clip", "0.05", "--optimizer", "adamw", "--weight-decay", "0.01"]
RESULTS = ("history.csv", "metrics.json", "recon.npz")


def run(command: list[str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def settings(gridsize: int, epochs: int, out: Path) -> list[str]:
    return [*TINY_ARGV, *STATEFUL, "--gridsize", str(gridsize), "--epochs", str(epochs), "--output-dir", str(out)]


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_run(a: Path, b: Path) -> None:
    for name in RESULTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    left, right = parameters(a), parameters(b)
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left), [k for k in left if not torch.equal(left[k], right[k])]


@pytest.mark.parametrize("gridsize, killed_in", [(1, 3), (2, 2)], ids=["gs1-k3", "gs2-k2"])
def test_a_run_killed_after_epoch_k_and_resumed_ends_as_the_uninterrupted_run(tmp_path, gridsize, killed_in):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run(RUNNER, *settings(gridsize, 4, whole))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    done = run(KILLED, str(killed_in), *settings(gridsize, 4, killed))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == killed_in - 1
    assert not (killed / "metrics.json").exists() and (killed / ".run.lock").exists()  # the claim the kill left
    # what a SIGTERM inside an epoch leaves (a state the finished run never has): gone once it resumes
    shutil.copy(killed / "checkpoints" / "last.ckpt", killed / "checkpoints" / "interrupted.ckpt")
    resumed = run(RUNNER, "--resume", "--output-dir", str(killed))
    assert resumed.returncode in FINISHED, resumed.stderr[-2000:]
    assert "taking over" in resumed.stderr  # the dead run's claim, named
    assert_same_run(whole, killed)
    assert not (killed / ".run.lock").exists() and not (killed / "checkpoints" / "interrupted.ckpt").exists()


def test_a_finished_run_resumed_with_more_epochs_equals_a_longer_run(tmp_path):
    longer, grown = tmp_path / "longer", tmp_path / "grown"
    assert run(RUNNER, *settings(1, 3, longer)).returncode in FINISHED
    assert run(RUNNER, *settings(1, 1, grown)).returncode in FINISHED
    # a signal's mid-epoch checkpoint from an earlier attempt: weights the grown run never had
    shutil.copy(grown / "checkpoints" / "last.ckpt", grown / "checkpoints" / "interrupted.ckpt")
    # the settings may be given again, as long as they are the recorded ones
    done = run(RUNNER, "--resume", *settings(1, 3, grown))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    assert_same_run(longer, grown)
    assert not (grown / "checkpoints" / "interrupted.ckpt").exists()
    assert json.loads((grown / "config.json").read_text())["training"]["epochs"] == 3


# --- refusals: exit 2, one line naming the flag or file, the run's folder untouched -----------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    done = run(RUNNER, *TINY_ARGV, "--epochs", "2", "--seed", "4", "--output-dir", str(out))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        status = main(argv)
        raise SystemExit(status)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


@pytest.mark.parametrize("given, named", [
    (["--seed", "9"], ["--seed=9", "recorded run's 4"]),
    (["--learning-rate", "0.05", "--N", "32"], ["--learning-rate=0.05", "--N=32"]),
    (["--epochs", "1"], ["--epochs=1", ">= the recorded run's 2"]),
    (["--overwrite"], ["--overwrite", "cannot be combined with --resume"]),
    (["--gridsize", "2", "--no-deterministic"], ["--gridsize=2", "--deterministic=False"]),
], ids=["seed", "two-settings", "fewer-epochs", "overwrite", "model-and-execution"])
def test_given_settings_that_differ_from_the_record_are_refused_by_name(recorded, capsys, given, named):
    before = snapshot(recorded)
    line = refused(capsys, ["--resume", "--output-dir", str(recorded), *given])
    assert all(part in line for part in named), line
    assert snapshot(recorded) == before


def test_more_epochs_are_refused_where_the_schedule_is_shaped_by_the_epoch_count(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = resolved_json(TorchRunnerConfig(scheduler="WarmupCosine", lr_warmup_epochs=1, epochs=2, output_dir=run_dir))
    (run_dir / "config.json").write_text(json.dumps(record))
    line = refused(capsys, ["--resume", "--output-dir", str(run_dir), "--epochs", "4"])
    assert "--epochs=4" in line and "WarmupCosine schedule" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def test_the_runs_own_config_json_as_settings_file_warns_of_nothing_it_did_not_choose(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(resolved_json(TorchRunnerConfig(epochs=2, output_dir=run_dir))))
    assert main(["--resume", "--output-dir", str(run_dir), "--config", str(run_dir / "config.json")]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume from" in err and "has no effect" not in err, err  # plateau_* under Default: defaults


def test_a_settings_file_is_checked_against_the_record_too(recorded, capsys, tmp_path):
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"batch_size": 8}))
    line = refused(capsys, ["--resume", "--output-dir", str(recorded), "--config", str(settings_file)])
    assert "--batch-size=8" in line and "recorded run's 4" in line


def test_a_complete_run_without_more_epochs_is_refused(recorded, capsys):
    before = snapshot(recorded)
    status = main(["--resume", "--output-dir", str(recorded)])
    assert status == 2
    assert "the run is complete (2 of 2 epochs" in capsys.readouterr().err
    assert snapshot(recorded) == before


def test_a_folder_without_a_run_record_is_refused(capsys, tmp_path):
    line = refused(capsys, ["--resume", "--output-dir", str(tmp_path / "nothing")])
    assert "--resume=" in line and "config.json" in line and "is --output-dir the folder of the run?" in line
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_damaged_checkpoint_is_refused_by_name(recorded, capsys, tmp_path, damage):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(recorded), str(copy)], check=True)
    (copy / "metrics.json").unlink()  # else it would be refused as complete
    checkpoint = copy / "checkpoints" / "last.ckpt"
    if damage == "missing":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = snapshot(copy)
    assert main(["--resume", "--output-dir", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "checkpoints/last.ckpt" in err
    assert ("nothing to resume from" if damage == "missing" else "expected an epoch-end run checkpoint") in err
    assert snapshot(copy) == before and not (copy / ".run.lock").exists()


def altered(checkpoint: Path, change) -> None:
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    torch.save(state, checkpoint)


def other_run(state) -> None:
    state["hyper_parameters"]["cfg"]["seed"] = 9
    state["hyper_parameters"]["cfg"]["model"]["architecture"] = "fno"


def other_shapes(state) -> None:
    name = next(k for k in state["state_dict"] if k.endswith("weight"))
    state["state_dict"][name] = state["state_dict"][name][:1]


def probe_not_a_tensor(state) -> None:
    state["hyper_parameters"]["probe"] = "x"


def lightning_entries_only(state) -> None:
    for key in [k for k in state if k != "epoch"]:
        del state[key]


@pytest.mark.parametrize("change, words", [
    (other_run, ["was written by another run", "model.architecture='fno' against 'cnn'", "seed=9 against 4"]),
    (other_shapes, ["do not fit the model its own config describes", "weight"]),
    (lightning_entries_only, ["expected an epoch-end run checkpoint", "KeyError", "no state_dict"]),
    (probe_not_a_tensor, ["expected an epoch-end run checkpoint", "probe is not an (16, 16) complex tensor"]),
], ids=["other-settings", "other-shapes", "not-a-run-checkpoint", "probe-not-a-tensor"])
def test_a_checkpoint_another_run_wrote_is_refused_before_any_result_is_removed(recorded, capsys, tmp_path,
                                                                                 change, words):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(recorded), str(copy)], check=True)
    altered(copy / "checkpoints" / "last.ckpt", change)
    before = snapshot(copy)
    assert main(["--resume", "--output-dir", str(copy), "--epochs", "3"]) == 2  # a finished run grown
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(word in err for word in words), err
    assert snapshot(copy) == before and not (copy / ".run.lock").exists()


def test_a_checkpoint_trained_on_another_probe_than_the_runs_data_is_refused(recorded, capsys, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(recorded), str(copy)], check=True)
    record = json.loads((copy / "config.json").read_text())
    record["runner"]["probe_defocus"] = 0.5  # the record edited: the simulation's probe is another now
    (copy / "config.json").write_text(json.dumps(record))
    before = snapshot(copy)
    assert main(["--resume", "--output-dir", str(copy), "--epochs", "3"]) == 2
    assert "trained with another probe" in capsys.readouterr().err
    assert snapshot(copy) == before


def test_a_checkpoint_records_the_train_split_it_trained_on(recorded):
    from ptycho_torch.model import RUN_STATE
    from ptycho_torch.npz_data import load_npz

    state = torch.load(recorded / "checkpoints" / "last.ckpt", weights_only=True)[RUN_STATE]
    train = load_npz(recorded / "data" / "train.npz", "train")
    assert state["data_digest"] == train.digest()
    assert load_npz(recorded / "data" / "test.npz", "test").digest() != train.digest()


def test_a_checkpoint_trained_on_other_data_than_the_runs_is_refused(recorded, capsys, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(recorded), str(copy)], check=True)
    record = json.loads((copy / "config.json").read_text())
    record["runner"]["data_seed"] += 1  # the same probe, another simulated object
    (copy / "config.json").write_text(json.dumps(record))
    before = snapshot(copy)
    assert main(["--resume", "--output-dir", str(copy), "--epochs", "3"]) == 2
    assert "was trained on other data than this run's train split" in capsys.readouterr().err
    assert snapshot(copy) == before


def test_a_changed_data_file_is_refused_and_the_same_one_resumes(recorded, tmp_path):
    from ptycho_torch.config import from_jsonable, TrainingConfig
    from ptycho_torch.npz_data import load_npz
    from ptycho_torch.output_folder import OutputDirError
    from ptycho_torch.resume import resume_point

    record = json.loads((recorded / "config.json").read_text())
    training = dataclasses.replace(from_jsonable(TrainingConfig, record["training"]), epochs=3)
    train = load_npz(recorded / "data" / "train.npz", "train")
    assert resume_point(recorded, training, train.probeGuess, train.digest()).checkpoint.name == "last.ckpt"
    changed = dataclasses.replace(train, diffraction=train.diffraction.copy())
    changed.diffraction.flat[0] += 1e-3  # one pattern's one pixel
    with pytest.raises(OutputDirError, match="trained on other data"):
        resume_point(recorded, training, train.probeGuess, changed.digest())


def test_removing_a_finished_runs_results_keeps_its_record_and_checkpoint_but_not_a_mid_epoch_one(tmp_path):
    """Before a resumed run trains: its old results go (metrics.json first), and so does the
    interrupted.ckpt a signal left (``--checkpoint`` on it would give a state the run never had)."""
    from ptycho_torch.resume import remove_results

    (tmp_path / "checkpoints").mkdir()
    for name in ("config.json", "metrics.json", "history.csv", "recon.npz", "timing.json",
                 "checkpoints/last.ckpt", "checkpoints/interrupted.ckpt"):
        (tmp_path / name).write_text("x")
    remove_results(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "checkpoints/last.ckpt", "config.json"]


def test_a_checkpoint_past_the_configured_epochs_is_refused_naming_both(recorded):
    from ptycho_torch.config import TrainingConfig, from_jsonable
    from ptycho_torch.npz_data import load_npz
    from ptycho_torch.output_folder import OutputDirError
    from ptycho_torch.resume import resume_point

    record = json.loads((recorded / "config.json").read_text())
    training = dataclasses.replace(from_jsonable(TrainingConfig, record["training"]), epochs=1)  # the run did 2
    train = load_npz(recorded / "data" / "train.npz", "train")
    with pytest.raises(OutputDirError, match="its checkpoint has 2 epochs done, more than epochs=1"):
        resume_point(recorded, training, train.probeGuess, train.digest())


def test_a_run_moved_to_another_folder_resumes_into_its_own_last_checkpoint(recorded, tmp_path):
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(recorded), str(moved)], check=True)  # the checkpoints name the old folder
    done = run(RUNNER, "--resume", "--output-dir", str(moved), "--epochs", "3")
    assert done.returncode in FINISHED, done.stderr[-2000:]
    files = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert len(files) == 2 and "last.ckpt" in files and files[0].startswith("epoch=2-"), files  # no last-v1.ckpt
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("num_threads", [0, 1], ids=["automatic", "explicit"])
def test_a_resumed_run_takes_the_thread_count_it_trained_with_unless_one_is_set(tmp_path, num_threads):
    """Another count sums in another order: with automatic threads the checkpoint says how many."""
    run_dir = tmp_path / "run"
    done = run(RUNNER, *TINY_ARGV, "--epochs", "1", "--num-threads", str(num_threads), "--output-dir", str(run_dir))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["ptycho_run_state"]["threads"] == 1  # OMP_NUM_THREADS=1 capped the automatic count
    state["ptycho_run_state"]["threads"] = 3  # as if it had trained on another machine's three free cores
    torch.save(state, checkpoint)
    done = run(RUNNER, "--resume", "--epochs", "2", "--output-dir", str(run_dir))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["threads"] == (3 if num_threads == 0 else 1)
    assert isinstance(timing["thread_changes"], list)  # this process's re-chosen counts (none where explicit)
    if num_threads != 0:
        assert timing["thread_changes"] == []


@pytest.mark.parametrize("recorded", [1000.0, None], ids=["recorded", "predates-the-record"])
def test_a_resumed_runs_fit_seconds_count_the_fit_before_the_resume(tmp_path, recorded):
    """timing.json's fit_seconds is the weights' whole fit: a resumed run adds the time its checkpoint
    records; with no record (an older checkpoint) the whole is unknown, and says so."""
    run_dir = tmp_path / "run"
    done = run(RUNNER, *TINY_ARGV, "--epochs", "1", "--output-dir", str(run_dir))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    first = json.loads((run_dir / "timing.json").read_text())
    assert first["fit_seconds"] == first["fit_seconds_this_process"] > 0
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert 0 < state["ptycho_run_state"]["fit_seconds"] <= first["fit_seconds"]  # saved inside the fit
    if recorded is None:
        del state["ptycho_run_state"]["fit_seconds"]
    else:
        state["ptycho_run_state"]["fit_seconds"] = recorded  # as if the first epoch had taken that long
    torch.save(state, checkpoint)
    done = run(RUNNER, "--resume", "--epochs", "2", "--output-dir", str(run_dir))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    timing = json.loads((run_dir / "timing.json").read_text())
    assert 0 < timing["fit_seconds_this_process"] < 1000
    if recorded is None:
        assert timing["fit_seconds"] is None
    else:
        assert timing["fit_seconds"] == pytest.approx(recorded + timing["fit_seconds_this_process"], rel=1e-12)
        assert torch.load(checkpoint, weights_only=True)["ptycho_run_state"]["fit_seconds"] > recorded


def test_a_finished_run_trained_further_and_killed_keeps_no_stale_results(tmp_path):
    out = tmp_path / "run"
    assert run(RUNNER, *settings(1, 1, out)).returncode in FINISHED
    assert (out / "metrics.json").exists()
    done = run(KILLED, "2", "--resume", "--epochs", "4", "--output-dir", str(out))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["training"]["epochs"] == 4
    assert not any((out / name).exists() for name in ("metrics.json", "history.csv", "recon.npz", "timing.json"))
    resumed = run(RUNNER, "--resume", "--output-dir", str(out))
    assert resumed.returncode in FINISHED, resumed.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["optimizer_steps"] > 0


def test_a_folder_whose_config_json_is_another_commands_is_refused_saying_it_cannot_be_read_as_a_run_record(
        capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"reconstruct": {"checkpoint": "last.ckpt"}}))
    line = refused(capsys, ["--resume", "--output-dir", str(tmp_path)])
    assert "needs the run's config.json, which cannot be read as one (" in line, line


def test_a_recorded_path_that_differs_is_named_as_written(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded_probe = tmp_path / "probe.npz"
    record = resolved_json(TorchRunnerConfig(epochs=2, output_dir=run_dir, probe_npz=recorded_probe))
    (run_dir / "config.json").write_text(json.dumps(record))
    line = refused(capsys, ["--resume", "--output-dir", str(run_dir), "--probe-npz", str(tmp_path / "other.npz")])
    assert f"recorded run's {str(recorded_probe)!r}" in line and "PosixPath" not in line, line
