"""The output folder: unusable paths refused before any change, one claim at a time, stale claims
recognised, and --overwrite removing exactly the previous run's artifacts (user files kept)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from ptycho_torch.output_folder import (
    DATASET_LAYOUT, LOCK_NAME, RUN_LAYOUT, OutputDirError, check_no_other_output, check_output_dir, claimed,
    comparison_layout,
    Tree, remove_previous_run, remove_temporaries,
)


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# what a command's records begin with (``RECORD_KEYS``, ``RECORD_HEADERS``: how --overwrite knows them)
RECORDS = {"config.json": '{"training": {}}', "metrics.json": '{"status": "ok"}', "timing.json": '{"fit_seconds": 1}',
           "sweep.json": '{"cells": []}', "history.csv": "epoch,step,loss\n0,0,1.0\n"}


def fill(folder, layout) -> None:
    """Every artifact ``layout`` names, as a run would write them (files with content, folders with a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, sub in layout.items():
        if sub is None:
            (folder / name).write_text(RECORDS.get(name, "artifact"))
        elif isinstance(sub, Tree):
            (folder / name).mkdir()
            for pattern in sub.patterns:  # a file of each kind the command writes there
                (folder / name / pattern.replace("*", "1")).write_text("artifact")
        else:
            fill(folder / name, sub)


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def write_claim(folder, **holder) -> None:
    (folder / LOCK_NAME).write_text(json.dumps(holder))


# --- paths that cannot be used: refused, nothing created ------------------------------------------

def unusable(tmp_path, kind):
    if kind == "below-a-file":
        (tmp_path / "plain").write_text("x")
        return tmp_path / "plain" / "out"
    if kind == "dangling-link":
        (tmp_path / "link").symlink_to(tmp_path / "missing")
        return tmp_path / "link"
    if kind == "dangling-link-above":
        (tmp_path / "link").symlink_to(tmp_path / "missing")
        return tmp_path / "link" / "out"
    if kind == "name-too-long":
        return tmp_path / ("n" * 300) / "out"
    if kind == "path-too-long":
        return tmp_path.joinpath(*["d" * 200] * 30)
    if kind == "a-file":
        (tmp_path / "plain").write_text("x")
        return tmp_path / "plain"
    if kind == "nul-character":  # os calls raise ValueError, not OSError, for these
        return tmp_path / "a\0b"
    raise AssertionError(kind)


KINDS = ["below-a-file", "dangling-link", "dangling-link-above", "name-too-long", "path-too-long", "a-file",
         "nul-character"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_unusable_path_is_refused_naming_it_before_anything_changes(tmp_path, kind):
    path = unusable(tmp_path, kind)
    before = tree(tmp_path)
    with pytest.raises(OutputDirError, match="output_dir="):
        check_output_dir(path, overwrite=True)
    with pytest.raises(OutputDirError, match="output_dir="):
        with claimed(path, True, RUN_LAYOUT):
            raise AssertionError("claimed an unusable folder")
    assert tree(tmp_path) == before


def test_a_read_only_file_system_is_refused(tmp_path, monkeypatch):
    """Mounting one needs privileges; the file system's read-only flag is what the check reads."""
    check_output_dir(tmp_path / "out", overwrite=False)
    real = os.statvfs
    flagged = lambda path: os.statvfs_result((*real(path)[:8], real(path).f_flag | os.ST_RDONLY, real(path)[9]))
    monkeypatch.setattr(os, "statvfs", flagged)
    with pytest.raises(OutputDirError, match="read-only file system"):
        check_output_dir(tmp_path / "out", overwrite=False)


def test_a_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    """Permissions do not bind root (which CI may be), so a user without them is stood in for."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real(path, mode) and path != tmp_path)
    with pytest.raises(OutputDirError, match="no permission"):
        check_output_dir(tmp_path / "out", overwrite=False)


def test_a_non_empty_folder_needs_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="--overwrite"):
        check_output_dir(tmp_path, overwrite=False)
    check_output_dir(tmp_path, overwrite=True)
    check_output_dir(tmp_path / "new" / "deeper", overwrite=False)  # creatable: fine


# --- the claim -------------------------------------------------------------------------------------

def test_a_claimed_folder_is_refused_naming_the_holder_and_released_after(tmp_path):
    with claimed(tmp_path, False, RUN_LAYOUT):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputDirError, match=f"claimed by a running run \\(pid {os.getpid()}"):
            with claimed(tmp_path, True, RUN_LAYOUT):
                raise AssertionError("two claims at once")
        assert (tmp_path / LOCK_NAME).exists()  # the refused second claim did not remove ours
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_busy_folder_is_refused_naming_its_live_holder_not_asking_for_overwrite(tmp_path):
    """Two runs started at once: the second found the first's files and was told to pass --overwrite."""
    with claimed(tmp_path, False, RUN_LAYOUT):
        (tmp_path / "config.json").write_text("{}")
        with pytest.raises(OutputDirError, match=f"claimed by a running run \\(pid {os.getpid()}") as refused:
            check_output_dir(tmp_path, overwrite=False)
        assert "--overwrite" not in str(refused.value)
    with pytest.raises(OutputDirError, match="folder is not empty; pass --overwrite"):  # the run is over
        check_output_dir(tmp_path, overwrite=False)


def test_a_failing_run_releases_its_claim(tmp_path):
    with pytest.raises(RuntimeError):
        with claimed(tmp_path, False, RUN_LAYOUT):
            raise RuntimeError("the run failed")
    assert os.listdir(tmp_path) == []


def test_a_stale_claim_is_refused_without_overwrite_and_taken_over_with_it(tmp_path, capsys):
    pid = dead_pid()
    write_claim(tmp_path, pid=pid, host=socket.gethostname(), started="earlier")
    with pytest.raises(OutputDirError, match=f"left by a run that ended.*pid {pid}.*--overwrite"):
        with claimed(tmp_path, False, RUN_LAYOUT):
            raise AssertionError("took a stale claim without --overwrite")
    with claimed(tmp_path, True, RUN_LAYOUT):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"pid {pid}" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_claim_from_another_host_is_refused_even_with_overwrite(tmp_path, overwrite):
    write_claim(tmp_path, pid=1, host="another-host.example", started="earlier")
    with pytest.raises(OutputDirError, match="another host.*another-host.example"):
        with claimed(tmp_path, overwrite, RUN_LAYOUT):
            raise AssertionError("took another host's claim")
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "another-host.example"


def test_overwrite_refuses_a_study_whose_run_folder_a_live_run_holds_and_removes_nothing(tmp_path):
    """A runner started from a study's commands.txt holds runs/cnn/seed0: the study's --overwrite
    deleted its files (and its claim) under it, and the runner then failed mid-fit."""
    layout = comparison_layout(["runs/cnn/seed0", "runs/cnn/seed1"])
    fill(tmp_path, layout)
    before = tree(tmp_path)
    with claimed(tmp_path / "runs" / "cnn" / "seed0", False, RUN_LAYOUT, resume=True):  # the live runner
        with pytest.raises(OutputDirError, match=r"runs/cnn/seed0'?: claimed by a running run \(pid "):
            with claimed(tmp_path, True, layout):
                raise AssertionError("replaced a study while one of its runs is live")
        assert tree(tmp_path) == sorted([*before, f"runs/cnn/seed0/{LOCK_NAME}"])  # nothing removed, no claim left
    with claimed(tmp_path, True, layout):  # once it ended, the study is replaced as before
        assert tree(tmp_path) == [LOCK_NAME]
    assert os.listdir(tmp_path) == []


def test_overwrite_takes_over_a_stale_claim_in_a_run_folder_of_the_study(tmp_path, capsys):
    layout = comparison_layout(["runs/cnn"])
    fill(tmp_path, layout)
    pid = dead_pid()
    write_claim(tmp_path / "runs" / "cnn", pid=pid, host=socket.gethostname(), started="earlier")
    with claimed(tmp_path, True, layout):
        assert tree(tmp_path) == [LOCK_NAME]
    assert f"pid {pid}" in capsys.readouterr().err
    fill(tmp_path / "runs" / "cnn", RUN_LAYOUT)
    write_claim(tmp_path / "runs" / "cnn", pid=1, host="another-host.example", started="earlier")
    with pytest.raises(OutputDirError, match="runs/cnn'?: claimed from another host"):
        with claimed(tmp_path, True, layout):
            raise AssertionError("took another host's claim")
    assert (tmp_path / "runs" / "cnn" / "config.json").exists()


# --- overwrite and temporaries -----------------------------------------------------------------------

def test_overwrite_removes_every_artifact_of_the_layout_and_keeps_and_names_user_files(tmp_path, capsys):
    runs = ("runs/cnn", "runs/fno")
    fill(tmp_path, comparison_layout(runs))
    mine = ["notes.txt", "runs/cnn/my_analysis.py", "data/README", "runs/fno/logs/my_notes.txt",
            "runs/cnn/checkpoints/README.md", "logs/summary.txt", "baseline/plot.py"]
    for name in mine:
        (tmp_path / name).write_text("mine")
    (tmp_path / "runs/cnn/checkpoints/best").mkdir()  # a folder of the user's inside one of the run's
    (tmp_path / "runs/cnn/checkpoints/best/epoch=3.ckpt").write_text("mine")
    with claimed(tmp_path, True, comparison_layout(runs)):
        assert tree(tmp_path) == sorted(["data", "data/README", "notes.txt", "runs", "runs/cnn",
                                         "runs/cnn/my_analysis.py", "runs/fno", "runs/fno/logs",
                                         "runs/fno/logs/my_notes.txt", "runs/cnn/checkpoints",
                                         "runs/cnn/checkpoints/README.md", "runs/cnn/checkpoints/best",
                                         "runs/cnn/checkpoints/best/epoch=3.ckpt", "logs", "logs/summary.txt",
                                         "baseline", "baseline/plot.py", LOCK_NAME])
    err = capsys.readouterr().err
    assert all(name in err for name in mine)


def snapshot(folder) -> dict[str, bytes | str]:
    """Every entry below ``folder``: a file's bytes, a link's target, a folder's name."""
    return {str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
            for p in folder.rglob("*")}


def refused_overwrite(folder, layout, match) -> None:
    """--overwrite of ``folder`` refused (check and claim alike) with nothing changed anywhere below tmp."""
    root = folder.parent
    before = snapshot(root)
    with pytest.raises(OutputDirError, match=match):
        check_no_other_output(folder, True, layout)
    with pytest.raises(OutputDirError, match=match):
        with claimed(folder, True, layout):
            raise AssertionError("overwrote a folder holding what no run wrote")
    assert snapshot(root) == before


def test_overwrite_refuses_a_symbolic_link_where_the_run_writes_and_changes_nothing(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "users"
    fill(run, RUN_LAYOUT)
    elsewhere.mkdir()
    (elsewhere / "last.ckpt").write_text("the user's model")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(elsewhere)
    refused_overwrite(run, RUN_LAYOUT, r"checkpoints \(a symbolic link, to .*users")
    (run / "checkpoints").unlink()  # a link of a file, and one in a study's run folder
    (run / "recon.npz").unlink()
    (run / "recon.npz").symlink_to(elsewhere / "last.ckpt")
    refused_overwrite(run, RUN_LAYOUT, r"recon.npz \(a symbolic link")
    study = tmp_path / "study"
    fill(study, comparison_layout(["runs/cnn"]))
    shutil.rmtree(study / "runs/cnn")
    (study / "runs/cnn").symlink_to(elsewhere)
    refused_overwrite(study, comparison_layout(["runs/cnn"]), r"runs/cnn \(a symbolic link")


def test_overwrite_refuses_entries_of_the_wrong_kind_and_folders_it_cannot_write_in(tmp_path, monkeypatch):
    from ptycho_torch import output_folder

    run = tmp_path / "run"
    fill(run, RUN_LAYOUT)
    (run / "metrics.json").unlink()
    (run / "metrics.json").mkdir()
    shutil.rmtree(run / "logs")
    (run / "logs").write_text("a file")
    (run / "checkpoints/last.ckpt").unlink()
    (run / "checkpoints/last.ckpt").mkdir()
    refused_overwrite(run, RUN_LAYOUT, r"metrics.json \(a folder, where the run writes a file\); "
                                       r"checkpoints/last.ckpt \(a folder.*logs \(a file, where the run writes a folder")
    run2 = tmp_path / "run2"
    fill(run2, RUN_LAYOUT)
    monkeypatch.setattr(output_folder, "_read_only", lambda folder: folder.name == "checkpoints")
    refused_overwrite(run2, RUN_LAYOUT, r"checkpoints \(a folder the run cannot write in\)")


@pytest.mark.parametrize("name, content", [("config.json", '{"name": "my-project"}'), ("metrics.json", "[1, 2]"),
                                           ("timing.json", '{"seconds": 3}'), ("history.csv", "date,value\n")])
def test_overwrite_refuses_a_record_no_run_wrote_and_removes_a_damaged_one(tmp_path, name, content):
    run = tmp_path / "run"
    fill(run, RUN_LAYOUT)
    (run / name).write_text(content)
    refused_overwrite(run, RUN_LAYOUT, rf"{name} \(not a record this command writes\)")
    (run / name).write_text(RECORDS[name][:7])  # cut short: a damaged record of the run, removed with the rest
    with claimed(run, True, RUN_LAYOUT):
        assert tree(run) == [LOCK_NAME]


def test_overwrite_keeps_and_names_checkpoints_lightning_does_not_write(tmp_path, capsys):
    fill(tmp_path, RUN_LAYOUT)
    (tmp_path / "checkpoints/model.ckpt").write_text("the user's")
    with claimed(tmp_path, True, RUN_LAYOUT):
        assert tree(tmp_path) == sorted(["checkpoints", "checkpoints/model.ckpt", LOCK_NAME])
    assert "checkpoints/model.ckpt" in capsys.readouterr().err


def test_a_file_where_a_run_writes_a_folder_is_the_users(tmp_path):
    (tmp_path / "checkpoints").write_text("not a folder")
    (tmp_path / "metrics.json").mkdir()
    removed, kept = remove_previous_run(tmp_path, RUN_LAYOUT)
    assert removed == [] and sorted(p.name for p in kept) == ["checkpoints", "metrics.json"]


def test_claiming_removes_temporaries_of_interrupted_writes_and_only_those(tmp_path):
    fill(tmp_path, RUN_LAYOUT)
    temporaries = [".config.json.a1b2.tmp", "data/.train.npz.x9.tmp", "checkpoints/.interrupted.ckpt.77.tmp",
                   f"{LOCK_NAME}.{dead_pid()}.0a0b.tmp"]
    users = [".my.tmp", "notes.tmp", "data/.other.tmp"]
    for name in temporaries + users:
        (tmp_path / name).write_text("x")
    removed = remove_temporaries(tmp_path, RUN_LAYOUT)
    assert sorted(str(p.relative_to(tmp_path)) for p in removed) == sorted(temporaries)
    assert all((tmp_path / name).exists() for name in users)


def test_a_folder_holding_only_temporaries_and_a_stale_claim_counts_as_empty(tmp_path):
    (tmp_path / ".train.npz.abc.tmp").write_text("half")
    write_claim(tmp_path, pid=dead_pid(), host=socket.gethostname())
    with claimed(tmp_path, True, DATASET_LAYOUT):
        assert tree(tmp_path) == [LOCK_NAME]
    assert os.listdir(tmp_path) == []


def test_a_claim_file_holding_json_nested_past_the_parsers_limit_is_an_unknown_holder_not_a_crash(tmp_path):
    (tmp_path / LOCK_NAME).write_text("[" * 4000)  # as a claim whose holder cannot be read: refused by name
    with pytest.raises(OutputDirError, match=r"claimed from another host \(pid \? on host \?"):
        with claimed(tmp_path, True, RUN_LAYOUT):
            raise AssertionError("claimed a folder whose claim cannot be read")
    assert (tmp_path / LOCK_NAME).read_text() == "[" * 4000


def test_a_run_folder_gone_while_a_study_is_overwritten_is_skipped_not_refused(tmp_path, monkeypatch):
    from ptycho_torch import output_folder

    layout = comparison_layout(["runs/cnn", "runs/fno"])
    fill(tmp_path, layout)
    acquire = output_folder._acquire

    def vanishing(folder, overwrite, log):
        if folder.name == "cnn":  # removed by someone between the look and the claim
            raise FileNotFoundError(2, "No such file or directory", str(folder))
        return acquire(folder, overwrite, log)

    monkeypatch.setattr(output_folder, "_acquire", lambda folder, overwrite, log: (
        vanishing if folder != tmp_path else acquire)(folder, overwrite, log))
    with claimed(tmp_path, True, layout):
        assert tree(tmp_path) == [LOCK_NAME]


def test_a_folder_another_run_filled_after_the_check_is_refused_under_the_claim(tmp_path, monkeypatch):
    """The emptiness check is repeated under the claim: another run may have finished its files there
    after this run looked (its metrics.json beside this run's would mix two runs)."""
    from ptycho_torch import output_folder

    out = tmp_path / "out"
    check = output_folder.check_output_dir

    def another_run_writes_after_the_check(path, overwrite, *, resume=False):
        check(path, overwrite, resume=resume)
        out.mkdir()
        (out / "metrics.json").write_text(RECORDS["metrics.json"])

    monkeypatch.setattr(output_folder, "check_output_dir", another_run_writes_after_the_check)
    with pytest.raises(OutputDirError, match="not empty"):
        with claimed(out, False, RUN_LAYOUT):
            raise AssertionError("claimed a folder another run had filled")
    assert tree(out) == ["metrics.json"] and (out / "metrics.json").read_text() == RECORDS["metrics.json"]


def test_a_stale_claim_taken_over_by_another_run_while_this_one_looked_is_refused_naming_it(tmp_path, monkeypatch):
    """Between this run's open of the stale claim and its lock, another run replaced the claim with its
    own (live) one: the file this run locked is no longer the claim, so it looks again and is refused."""
    import fcntl

    from ptycho_torch import output_folder

    write_claim(tmp_path, pid=dead_pid(), host=socket.gethostname(), started="earlier")
    read, other = output_folder._read_holder, []

    def another_run_takes_over_first(fd):
        if not other:  # the other run: its own claim file, locked (held), renamed over the stale one
            theirs = tmp_path / ".theirs.tmp"
            theirs.write_text(json.dumps({"pid": 4242, "host": socket.gethostname(), "started": "now"}))
            other.append(os.open(theirs, os.O_RDONLY))
            fcntl.flock(other[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(theirs, tmp_path / LOCK_NAME)
        return read(fd)

    monkeypatch.setattr(output_folder, "_read_holder", another_run_takes_over_first)
    try:
        with pytest.raises(OutputDirError, match="claimed by a running run \\(pid 4242"):
            with claimed(tmp_path, True, RUN_LAYOUT):
                raise AssertionError("two live runs claimed one folder")
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == 4242  # theirs, untouched
    finally:
        os.close(other[0])


@pytest.mark.parametrize("layout, inside", [
    (RUN_LAYOUT, "checkpoints/last.ckpt"),
    (comparison_layout(["runs/cnn"]), "baseline/recon_200.npz"),
    (comparison_layout(["runs/cnn"]), "cells/x.json"),
    (comparison_layout(["runs/cnn"]), "runs/cnn/checkpoints/epoch=3-step=9.ckpt"),
])
def test_overwrite_refuses_an_input_among_the_files_a_command_writes_into_its_own_folders(tmp_path, layout, inside):
    """Folders whose file names are not fixed (Tree): the files matching their patterns are removed by
    --overwrite, so reading one of them as an input would delete it before the run reads it."""
    from ptycho_torch.output_folder import check_inputs_survive

    given = tmp_path / inside
    given.parent.mkdir(parents=True)
    given.write_text("input")
    with pytest.raises(OutputDirError, match=f"test_npz=.*lies in '{inside}'"):
        check_inputs_survive(tmp_path, True, layout, {"test_npz": given})
    mine = given.parent / "notes.npz"  # not a name the command writes there: the user's, kept
    mine.write_text("input")
    check_inputs_survive(tmp_path, True, layout, {"test_npz": mine})


def test_an_output_folder_that_is_a_link_to_a_folder_is_used_and_written_through(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    check_output_dir(tmp_path / "out", overwrite=False)  # only a dangling link is refused
    with claimed(tmp_path / "out", False, RUN_LAYOUT) as folder:
        (folder / "config.json").write_text(RECORDS["config.json"])
    assert tree(target) == ["config.json"]


def test_a_folder_name_of_the_file_systems_longest_length_is_accepted_and_one_byte_more_refused(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    check_output_dir(tmp_path / ("n" * name_max), overwrite=False)
    with pytest.raises(OutputDirError, match=f"a name is longer than the file system allows \\({name_max} bytes\\)"):
        check_output_dir(tmp_path / ("n" * (name_max + 1)), overwrite=False)
