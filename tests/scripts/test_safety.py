"""Nothing lost, nothing mixed: the three commands under races, signals, refusals and failed training.

Behaviour about processes is tested with real processes: two workers released at the same
instant into one folder, SIGTERM / SIGINT sent to running commands, an --overwrite cut short.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ptycho_torch.npz_data import load_npz
from ptycho_torch.output_folder import LOCK_NAME
from tests.helpers import FINISHED, TINY_ARGV, TINY_DATA_ARGV, TINY_WRAPPER_ARGV

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
MODULES = {"runner": "scripts.studies.grid_lines_torch_runner", "wrapper": "scripts.studies.grid_lines_compare_wrapper",
           "datagen": "scripts.grid_lines_datagen"}
TINY = {"runner": TINY_ARGV, "wrapper": [*TINY_WRAPPER_ARGV, "--architectures", "cnn"],
        "datagen": [*TINY_DATA_ARGV, "--N", "16", "--no-progress"]}
LONG_RUN = [*TINY_ARGV, "--epochs", "100000"]  # stopped by a signal long before it ends


def messages(err: str) -> list[str]:
    """stderr lines, less the notes on given settings that cannot act (the tiny argv sets fno sizes for a cnn)."""
    return [line for line in err.strip().splitlines() if "has no effect in this run" not in line]


def leftovers(folder: Path) -> list[str]:
    """Temporary files and claims: what a finished or stopped command must never leave behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name == LOCK_NAME or (p.name.startswith(".") and p.name.endswith(".tmp")))


def start(command: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", MODULES[command], *argv], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 60.0, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(poll)


def main_of(command: str):
    from scripts import grid_lines_datagen
    from scripts.studies import grid_lines_compare_wrapper, grid_lines_torch_runner

    return {"runner": grid_lines_torch_runner.main, "wrapper": grid_lines_compare_wrapper.main,
            "datagen": grid_lines_datagen.main}[command]


def exit_status(command: str, argv: list[str]) -> int:
    """A command's exit status in this process: its return value, or the code argparse exits with."""
    try:
        return main_of(command)(argv)
    except SystemExit as exit_:
        return exit_.code


# --- two runs released together into one folder: one writes, the other is refused ----------------------

class Worker:
    """A command_worker process: imports done, waiting for requests."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "tests.scripts.command_worker"], cwd=ROOT, env=ENV,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def send(self, command: str, argv: list[str]) -> None:
        self.process.stdin.write(json.dumps([command, *argv]) + "\n")
        self.process.stdin.flush()

    def status(self) -> int:
        line = ""
        while not line.startswith("done "):  # the command's own output comes first
            line = self.process.stdout.readline()
            assert line, "the worker died"
        return int(line.split()[1])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture
def workers():
    pair = [Worker(), Worker()]
    yield pair
    for worker in pair:
        worker.close()


def race(workers, command: str, folder: Path, argv_of) -> tuple[int, int]:
    """Release both workers into ``folder`` at once; (winner index, loser's status)."""
    for index, worker in enumerate(workers):
        worker.send(command, argv_of(index))
    statuses = [worker.status() for worker in workers]
    assert sorted(statuses) in ([0, 2], [2, 3]), statuses  # 3: a tiny run that finished collapsed
    winner = next(i for i, status in enumerate(statuses) if status != 2)
    return winner, statuses[1 - winner]


def test_two_commands_released_together_into_one_folder_never_both_write(workers, tmp_path):
    for round_ in range(16):  # data generator: fast rounds; the folder exists (empty) in half of them
        folder = tmp_path / f"data{round_}"
        if round_ % 2:
            folder.mkdir()
        winner, _ = race(workers, "datagen", folder,
                         lambda i: [*TINY["datagen"], "--data-seed", str(10 + i), "--output-dir", str(folder)])
        seeds = {load_npz(folder / f"{split}.npz", split).metadata["data_seed"] for split in ("train", "test")}
        assert seeds == {10 + winner} and sorted(os.listdir(folder)) == ["test.npz", "train.npz"]
    for round_ in range(3):  # whole runs
        folder = tmp_path / f"run{round_}"
        winner, _ = race(workers, "runner", folder,
                         lambda i: [*TINY["runner"], "--epochs", "1", "--seed", str(20 + i), "--output-dir", str(folder)])
        assert json.loads((folder / "config.json").read_text())["training"]["seed"] == 20 + winner
        assert json.loads((folder / "metrics.json").read_text())["status"] in ("ok", "collapsed")
        assert leftovers(folder) == []


# --- signals ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_run_with_128_plus_its_number_a_checkpoint_and_no_temporary(tmp_path, signum, status):
    out = tmp_path / "run"
    process = start("runner", [*LONG_RUN, "--output-dir", str(out)])
    wait_for(lambda: (out / "checkpoints" / "last.ckpt").exists())  # training, one epoch done
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err[-2000:]
    assert f"interrupted by {signum.name}" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert leftovers(out) == []
    import torch

    checkpoint = torch.load(out / "checkpoints" / "interrupted.ckpt", weights_only=False)
    assert checkpoint["state_dict"] and checkpoint["global_step"] >= 1
    assert not (out / "metrics.json").exists()  # a stopped run records no result


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_after_the_summary_line_leaves_the_runs_own_exit_status(tmp_path, signum):
    # the interpreter's shutdown after a finished run takes about a second with Lightning loaded
    process = start("runner", [*TINY_ARGV, "--epochs", "1", "--output-dir", str(tmp_path / "run")])
    line = process.stdout.readline()
    assert line.startswith("results in"), line + process.stderr.read()[-2000:]
    time.sleep(0.2)  # main has returned; the process is shutting down (or, on a fast machine, gone)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode in FINISHED, err[-2000:]
    assert "interrupted by" not in err and (tmp_path / "run" / "metrics.json").is_file()


def test_a_signal_while_the_data_is_written_leaves_no_temporary_and_a_rerun_cleans_a_killed_one(tmp_path):
    big = [*TINY["datagen"], "--object-size", "192", "--N", "32", "--n-train-images", "8", "--train-stride", "2"]
    for attempt, delay in enumerate((0.3, 1.0, 2.0)):
        out = tmp_path / f"terminated{attempt}"
        process = start("datagen", [*big, "--output-dir", str(out)])
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode in (143, -signal.SIGTERM, 0), err[-2000:]  # -15: before the handler was set
        assert not out.exists() or leftovers(out) == []
    out = tmp_path / "killed"
    process = start("datagen", [*big, "--output-dir", str(out)])
    wait_for(lambda: out.exists() and any(out.iterdir()), timeout=60, poll=0.001)
    process.kill()  # SIGKILL: nothing can clean up; the claim and temporaries stay until the next claim
    process.wait(timeout=30)
    assert exit_status("datagen", [*TINY["datagen"], "--output-dir", str(out), "--overwrite"]) == 0
    assert leftovers(out) == [] and sorted(os.listdir(out)) == ["test.npz", "train.npz"]


@pytest.mark.integration
def test_a_signal_stops_every_rank_of_a_ddp_run(tmp_path):
    out = tmp_path / "ddp"
    process = start("runner", [*LONG_RUN, "--strategy", "ddp", "--devices", "2", "--output-dir", str(out)])
    wait_for(lambda: (out / "checkpoints" / "last.ckpt").exists(), timeout=120)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=90)
    assert process.returncode == 143, err[-2000:]
    assert err.count("interrupted by SIGTERM") == 2  # rank 0 and the rank it started
    assert leftovers(out) == []


# --- an --overwrite cut short never leaves two runs' files ---------------------------------------------

def run_files(folder: Path) -> dict[str, int]:
    """Every file of the folder (user files excluded) with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.name != "notes.txt"}


def test_an_interrupted_overwrite_never_leaves_files_of_two_runs(tmp_path):
    previous = tmp_path / "previous"
    assert exit_status("runner", [*TINY["runner"], "--epochs", "1", "--output-dir", str(previous)]) in FINISHED
    (previous / "notes.txt").write_text("the user's")
    def newer(path: Path) -> bool:
        return path.stat().st_mtime_ns >= cut

    moments = {  # when to stop the overwriting run (each condition stays true once reached)
        "removing": lambda out: not (out / "config.json").exists() or newer(out / "config.json"),
        "new record written": lambda out: newer(out / "config.json"),
        "training": lambda out: newer(out / "checkpoints" / "last.ckpt"),
    }
    for moment, reached in moments.items():
        out = tmp_path / moment.replace(" ", "_")
        shutil.copytree(previous, out)  # copy2: the previous run's files keep their times
        cut = time.time_ns()
        process = start("runner", [*LONG_RUN, "--seed", "9", "--overwrite", "--output-dir", str(out)])
        wait_for(lambda: _quietly(reached, out), poll=0.0005)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        times = run_files(out)
        old = sorted(name for name, t in times.items() if t < cut)
        new = sorted(name for name, t in times.items() if t >= cut)
        assert not (old and new), f"stopped while {moment}: old {old} beside new {new}"
        assert (out / "notes.txt").read_text() == "the user's"
        assert leftovers(out) == []


def _quietly(condition, out: Path) -> bool:
    try:
        return condition(out)
    except FileNotFoundError:
        return False


# --- refused input: exit 2, one line naming the flag or file, no folder ------------------------------

def empty_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A train file that keeps the contract but holds no pattern, and a valid test file."""
    from ptycho_torch.simulation import simulate_splits
    from tests.helpers import TINY_SIMULATION

    splits = simulate_splits(TINY_SIMULATION)
    arrays = splits["train"].to_arrays()
    for key in ("diffraction", "Y_I", "Y_phi", "coords", "image_index"):
        arrays[key] = arrays[key][:0]  # (0, ...)
    np.savez(tmp_path / "empty_train.npz", **arrays)
    np.savez(tmp_path / "test.npz", **splits["test"].to_arrays())
    arrays = splits["train"].to_arrays()
    for key in ("diffraction", "Y_I", "Y_phi", "coords", "image_index"):
        arrays[key] = arrays[key][:1]  # one pattern: it trains, but none is left to validate on
    np.savez(tmp_path / "one_train.npz", **arrays)
    return tmp_path / "empty_train.npz", tmp_path / "test.npz"


def refusals(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Runner settings (argv) that only the disk or the machine can refuse, and what the message names."""
    np.savez(tmp_path / "small_probe.npz", probeGuess=np.ones((8, 8), np.complex64))
    empty_train, test = empty_dataset(tmp_path)
    cases = {
        "missing-probe": (["--probe-npz", str(tmp_path / "missing.npz")], "missing.npz"),
        "wrong-size-probe": (["--probe-npz", str(tmp_path / "small_probe.npz")], "probeGuess"),
        "gpu-on-a-cpu-machine": (["--accelerator", "gpu"], "accelerator"),
        "tensorboard-missing": (["--logger-backend", "tensorboard"], "logger-backend"),
        "no-pattern": (["--train-npz", str(empty_train), "--test-npz", str(test)], "empty_train.npz"),
        "plateau-without-validation": (["--scheduler", "ReduceLROnPlateau", "--object-size", "16",
                                        "--train-stride", "16", "--test-stride", "16"], "val-fraction"),
        "missing-train-file": (["--train-npz", str(tmp_path / "nope.npz"), "--test-npz", str(test)], "nope.npz"),
        "plateau-with-a-one-pattern-file": (["--train-npz", str(tmp_path / "one_train.npz"), "--test-npz", str(test),
                                             "--scheduler", "ReduceLROnPlateau"], "val-fraction"),
    }
    import torch

    if torch.cuda.is_available():
        del cases["gpu-on-a-cpu-machine"]
    return cases


def as_command_argv(command: str, argv: list[str]) -> list[str] | None:
    """The runner argv spelled for ``command``; None where the command lacks one of its flags."""
    from scripts.grid_lines_datagen import simulation_fields
    from scripts.studies.grid_lines_compare_wrapper import wrapper_flags
    from scripts.studies.grid_lines_torch_runner import runner_flags

    if command == "runner":
        return argv
    names = {flag: name for name, flag in runner_flags().items()}
    allowed = wrapper_flags() if command == "wrapper" else {f.name: runner_flags()[f.name] for f in simulation_fields()}
    spelled = [allowed.get(names[a], "?") if a in names else a for a in argv]
    return None if "?" in spelled else spelled


REFUSALS = ["missing-probe", "wrong-size-probe", "gpu-on-a-cpu-machine", "tensorboard-missing", "no-pattern",
            "plateau-without-validation", "missing-train-file", "plateau-with-a-one-pattern-file"]
DATAGEN_REFUSALS = ["missing-probe", "wrong-size-probe"]  # the data generator has only the dataset settings


@pytest.mark.parametrize("command, case", [(c, k) for c in ("runner", "wrapper", "datagen") for k in REFUSALS
                                           if c != "datagen" or k in DATAGEN_REFUSALS])
def test_refused_input_exits_2_with_one_line_and_creates_no_folder(command, case, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    cases = refusals(tmp_path)
    if case not in cases:
        pytest.skip("this machine has a GPU")
    argv, named = cases[case]
    argv = as_command_argv(command, argv)
    out = tmp_path / "out" / "deeper"
    capsys.readouterr()
    assert exit_status(command, [*TINY[command], *argv, "--output-dir", str(out)]) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(("error:", "usage:")) or err[-1].startswith("error:"), err
    assert named in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "out").exists()


# --- --overwrite never removes the files the run reads -------------------------------------------------

@pytest.mark.parametrize("command, setting, inside", [
    ("runner", "--probe-npz", "data/train.npz"),
    ("runner", "--train-npz", "data/train.npz"),
    ("runner", "--test-npz", "data/test.npz"),
    ("wrapper", "--train-npz", "runs/cnn/data/train.npz"),
    ("wrapper", "--probe-npz", "data/test.npz"),
    ("datagen", "--probe-npz", "train.npz"),
])
def test_overwrite_refuses_to_remove_an_input_it_is_asked_to_read(command, setting, inside, tmp_path, capsys):
    from ptycho_torch.simulation import simulate_splits, write_dataset
    from tests.helpers import TINY_SIMULATION

    out = tmp_path / "out"
    write_dataset(simulate_splits(TINY_SIMULATION), (out / inside).parent)
    before = {p: p.read_bytes() for p in out.rglob("*.npz")}
    write_dataset(simulate_splits(TINY_SIMULATION), tmp_path / "elsewhere")
    other = "--test-npz" if setting == "--train-npz" else "--train-npz"
    given = [setting, str(out / inside), other, str(tmp_path / "elsewhere" / f"{other[2:-4]}.npz")]
    argv = given if setting != "--probe-npz" else [setting, str(out / inside)]
    capsys.readouterr()
    assert exit_status(command, [*TINY[command], *argv, "--output-dir", str(out), "--overwrite"]) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and "--overwrite removes" in err[0] and setting[2:].replace("-", "_") in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*.npz")} == before


def test_an_input_in_a_folder_of_the_users_own_survives_overwrite(tmp_path):
    from ptycho_torch.simulation import simulate_splits, write_dataset
    from tests.helpers import TINY_SIMULATION

    out = tmp_path / "out"
    write_dataset(simulate_splits(TINY_SIMULATION), out / "my_data")
    argv = ["--train-npz", str(out / "my_data" / "train.npz"), "--test-npz", str(out / "my_data" / "test.npz")]
    assert exit_status("runner", [*TINY["runner"], *argv, "--output-dir", str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(out / "my_data")) == ["test.npz", "train.npz"]


@pytest.mark.parametrize("command, held, kind", [
    ("runner", ["sweep.json", "runs/cnn/metrics.json"], "a comparison study"),
    ("wrapper", ["history.csv", "checkpoints/last.ckpt", "metrics.json"], "a training run"),
    ("wrapper", ["recon.npz", "config.json"], "a reconstruction"),
    ("datagen", ["history.csv", "recon.npz"], "a reconstruction and a training run"),
], ids=["runner-into-a-study", "wrapper-into-a-run", "wrapper-into-a-reconstruction", "datagen-into-a-run"])
def test_overwrite_refuses_a_folder_holding_another_commands_output(command, held, kind, tmp_path, capsys):
    out = tmp_path / "out"
    for name in held:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("theirs")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    capsys.readouterr()
    assert exit_status(command, [*TINY[command], "--output-dir", str(out), "--overwrite"]) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and f"holds the files of {kind}" in err[0], err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


@pytest.mark.parametrize("command, link, dataset", [("runner", "data", True), ("wrapper", "runs/cnn", False),
                                                     ("datagen", "test.npz", False)])
def test_overwrite_refuses_to_write_through_a_link_where_the_command_writes(command, link, dataset, tmp_path, capsys):
    """A run's subfolder (or file) linked elsewhere: the run would write into the user's files there."""
    from tests.ptycho_torch.test_output_folder import snapshot

    out, users = tmp_path / "out", tmp_path / "users"
    users.mkdir()
    for name in ("train.npz", "test.npz") if dataset else ("metrics.json",):
        (users / name).write_text("the user's")
    (out / link).parent.mkdir(parents=True)
    (out / link).symlink_to(users if dataset or command == "wrapper" else users / "metrics.json")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert exit_status(command, [*TINY[command], "--output-dir", str(out), "--overwrite"]) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and f"{link} (a symbolic link, to" in err[0], err
    assert snapshot(tmp_path) == before


# --- output paths that cannot be used: exit 2, one line, nothing created -------------------------------------

@pytest.mark.parametrize("command", ["runner", "wrapper", "datagen"])
@pytest.mark.parametrize("kind", ["below-a-file", "dangling-link", "name-too-long", "a-file", "virtual-file-system"])
def test_an_unusable_output_path_exits_2_without_a_traceback(command, kind, tmp_path, capsys):
    from tests.ptycho_torch.test_output_folder import unusable

    out = Path("/proc/no_such_process_folder/out") if kind == "virtual-file-system" else unusable(tmp_path, kind)
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    assert exit_status(command, [*TINY[command], "--output-dir", str(out)]) == 2
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: output_dir=") and "Traceback" not in err[0], err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_blank_output_folder_from_a_settings_file_exits_2_and_creates_nothing(tmp_path, capsys, monkeypatch):
    # the flag's own parser refuses "  "; from a file the path rule does (a folder named "  " is a typo),
    # naming the flag, before anything is imported or made. (The wrapper does not take output_dir from a
    # file: it warns and keeps its own.)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.json").write_text(json.dumps({"output_dir": "  "}))
    capsys.readouterr()
    assert exit_status("runner", [*TINY_ARGV, "--config", "settings.json"]) == 2
    err = messages(capsys.readouterr().err)
    assert "--output-dir='  '" in err[-1] and "non-empty path" in err[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_a_warning_of_the_runs_own_prints_as_one_line_without_its_source(tmp_path):
    """The project's warnings read as the commands' other messages: "warning: ...", no file:line
    prefix, no UserWarning, no source line (other libraries' warnings keep Python's format)."""
    sparse = [*TINY_ARGV, "--object-size", "48", "--test-stride", "16", "--epochs", "1"]  # corners left unlit
    done = subprocess.run([sys.executable, "-m", MODULES["runner"], *sparse, "--output-dir", str(tmp_path / "out")],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode in FINISHED, done.stderr[-2000:]
    unlit = [line for line in done.stderr.splitlines() if "lit by no scan position" in line]
    assert len(unlit) == 1 and unlit[0].startswith("warning: ") and "of the scored region" in unlit[0], done.stderr
    assert "UserWarning" not in done.stderr and "preflight.py" not in done.stderr


# --- one error path: each kind of failure has its exit status ------------------------------------------

def failures():
    import errno

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ptycho_torch.config import ConfigError, Problem
    from ptycho_torch.interrupts import Interrupted
    from ptycho_torch.npz_data import DataError
    from ptycho_torch.outcome import NonFiniteGradientError
    from ptycho_torch.output_folder import OutputDirError

    return {
        "bad-setting": (ConfigError("training", [Problem("epochs", 0, "must be >= 1")]), 2, "error: --epochs=0"),
        "bad-file": (DataError("a.npz", "diffraction", "float32", "int8"), 2, "error: a.npz"),
        "bad-folder": (OutputDirError("output_dir='x': claimed"), 2, "error: output_dir="),
        "non-finite-gradient": (NonFiniteGradientError("non-finite gradient at step 3"), 3, "error: non-finite"),
        "sigterm": (Interrupted(signal.SIGTERM), 143, "stopped: interrupted by SIGTERM"),
        "sigint": (Interrupted(signal.SIGINT), 130, "stopped: interrupted by SIGINT"),
        "lightning-sigterm": (SIGTERMException(), 143, "stopped: interrupted by SIGTERM"),
        "disk-full": (OSError(errno.ENOSPC, "No space left on device", "x/metrics.json"), 1, "error: No space left"),
        "disk-full-in-torch-save": (raised_while_handling(RuntimeError("[enforce fail at inline_container.cc:672] . "
                                                                      "unexpected pos 141952 vs 141844"),
                                                         OSError(errno.ENOSPC, "No space left on device")),
                                    1, "error: No space left"),
        "out-of-memory": (MemoryError("Unable to allocate 7.89 GiB for an array"), 1,
                          "error: out of memory (Unable to allocate 7.89 GiB"),
    }


def raised_while_handling(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` as a library raises it inside an ``except`` for ``cause``."""
    error.__context__ = cause
    return error


@pytest.mark.parametrize("kind", ["bad-setting", "bad-file", "bad-folder", "non-finite-gradient", "sigterm", "sigint",
                                  "lightning-sigterm", "disk-full", "disk-full-in-torch-save", "out-of-memory"])
def test_each_kind_of_failure_ends_in_one_line_and_its_exit_status(kind, capsys):
    from scripts.studies.grid_lines_torch_runner import runner_flags
    from scripts.studies.runner_cli import run_command

    error, status, line = failures()[kind]

    def work() -> int:
        raise error

    assert run_command(work, runner_flags()) == status
    err = messages(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(line), err


@pytest.mark.parametrize("error", [RuntimeError("a bug"), SystemExit(5)], ids=["bug", "other-exit"])
def test_a_bug_is_not_disguised_as_an_exit_status(error):
    from scripts.studies.runner_cli import run_command

    def work() -> int:
        raise error

    with pytest.raises(type(error)):
        run_command(work)


def test_the_wrapper_checks_every_rows_folder_before_writing(tmp_path, capsys):
    out = tmp_path / "compare"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "fno").write_text("a file where a row's folder goes")
    before = sorted(out.rglob("*"))
    argv = [*TINY["wrapper"], "--architectures", "cnn,fno", "--output-dir", str(out), "--overwrite"]
    assert exit_status("wrapper", argv) == 2
    assert "runs/fno" in capsys.readouterr().err and sorted(out.rglob("*")) == before


def test_a_run_that_fails_while_writing_its_results_leaves_no_metrics_json(tmp_path, capsys, monkeypatch):
    """metrics.json is written last: its presence means a whole run, which a restarted study keeps as
    finished. A write failing after the others (here the last picture, as on a full disk) exits 1
    and leaves a folder that is not mistaken for a finished run."""
    import errno

    from ptycho_torch import plots
    from scripts.studies.sweep import FINISHED as FINISHED_CELL, cell_state
    from scripts.studies.grid_lines_torch_runner import parse_config

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "plot_training", disk_full)
    out = tmp_path / "run"
    argv = [*TINY["runner"], "--output-dir", str(out)]
    assert exit_status("runner", argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (out / "recon.npz").is_file() and (out / "history.csv").is_file()  # written before the failure
    assert not (out / "metrics.json").exists() and leftovers(out) == []  # claim released, no temporary
    assert cell_state(parse_config(argv)[0]) != FINISHED_CELL


def test_a_reconstruction_that_fails_while_writing_leaves_no_metrics_json(tmp_path, capsys, monkeypatch):
    import errno

    from ptycho_torch import plots
    from scripts.grid_lines_reconstruct import main as reconstruct

    run = tmp_path / "run"
    assert exit_status("runner", [*TINY["runner"], "--output-dir", str(run)]) in FINISHED

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "plot_reconstruction", disk_full)
    out = tmp_path / "applied"
    assert reconstruct(["--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--test-npz",
                        str(run / "data" / "test.npz"), "--output-dir", str(out)]) == 1
    assert (out / "recon.npz").is_file() and not (out / "metrics.json").exists() and leftovers(out) == []


# --- honest outcomes ----------------------------------------------------------------------------------------

def test_a_diverged_run_writes_its_artifacts_records_null_scores_and_exits_3(tmp_path, capsys):
    out = tmp_path / "run"
    assert exit_status("runner", [*TINY["runner"], "--learning-rate", "1e30", "--output-dir", str(out)]) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["status_reason"]
    for channel in ("amplitude", "phase"):
        scores = {name: value for name, value in metrics["mean"][channel].items() if name != "reason"}
        assert set(scores) >= {"ssim", "psnr", "mae", "frc50"} and set(scores.values()) == {None}
    assert (out / "recon.npz").exists() and (out / "history.csv").exists()
    warnings = [line for line in messages(capsys.readouterr().err) if line.startswith("warning:")]
    assert len(warnings) == 1 and "diverged" in warnings[0]


def test_an_untrained_run_exits_3_with_its_status(tmp_path, capsys):
    out = tmp_path / "run"  # a step too small to change any weight in float32
    argv = [*TINY["runner"], "--optimizer", "sgd", "--momentum", "0", "--learning-rate", "1e-30"]
    assert exit_status("runner", [*argv, "--output-dir", str(out)]) == 3
    assert json.loads((out / "metrics.json").read_text())["status"] == "untrained"
    assert "warning: run in" in capsys.readouterr().err
    assert exit_status("runner", [*TINY["runner"], "--output-dir", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["status"] == "ok"


def test_the_error_policy_on_non_finite_gradients_ends_in_one_line_and_status_3(tmp_path, capsys):
    argv = [*TINY["runner"], "--learning-rate", "1e30", "--nonfinite-grad-policy", "error"]
    assert exit_status("runner", [*argv, "--output-dir", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: non-finite gradient")
    assert leftovers(tmp_path / "run") == []


def test_the_comparison_table_carries_each_rows_status_and_a_failed_row_exits_3(tmp_path):
    out = tmp_path / "compare"
    argv = [*TINY["wrapper"], "--architectures", "cnn,fno", "--torch-optimizer", "sgd", "--torch-momentum", "0",
            "--torch-learning-rate", "1e-30", "--output-dir", str(out)]
    assert exit_status("wrapper", argv) == 3
    with open(out / "metrics_table.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["row"], r["architecture"], r["status"]) for r in table if r["row"] == "run"] == [
        ("run", "cnn", "untrained"), ("run", "fno", "untrained")]
    assert [r["status"] for r in table if r["row"] == "mean"] == ["untrained=1", "untrained=1"]
    assert "| status |" in (out / "metrics_table.md").read_text()


def test_gridsize_2_refuses_a_test_file_it_cannot_group_naming_it(tmp_path, capsys):
    import dataclasses

    from ptycho_torch.simulation import simulate_splits, write_dataset
    from tests.helpers import TINY_SIMULATION

    write_dataset(simulate_splits(TINY_SIMULATION), tmp_path / "good")
    write_dataset(simulate_splits(dataclasses.replace(TINY_SIMULATION, object_size=16)), tmp_path / "single")
    argv = ["--train-npz", str(tmp_path / "good" / "train.npz"), "--test-npz", str(tmp_path / "single" / "test.npz"),
            "--gridsize", "2", "--output-dir", str(tmp_path / "out")]
    assert exit_status("runner", [*TINY["runner"], *argv]) == 2
    err = messages(capsys.readouterr().err)
    assert "--gridsize=2" in err[-1] and str(tmp_path / "single" / "test.npz") in err[-1]
    assert not (tmp_path / "out").exists()
