"""The output folder of a command: checked before anything is written, claimed for one run at a time.

    check_output_dir(path, overwrite)           no disk change; OutputDirError names the path and the rule
    with claimed(path, overwrite, RUN_LAYOUT):  create, claim, clean, then write
    with claimed(path, False, RUN_LAYOUT, resume=True):  claim a run's own folder to continue it

A claim is the file ``.run.lock`` (pid, host, start time), created atomically with its content
(``link`` of a finished temporary file fails if the name exists) and held under ``flock`` for the
run: a second run is refused naming the holder, and a claim whose holder died (the kernel drops
the lock with the process) is recognised as stale. With ``overwrite`` the previous run's own
artifacts (the LAYOUTS below, the one list of what each command writes) are removed before the
new run writes anything, so the folder never holds files of two runs; anything else is left
alone and named. Temporary files of an interrupted write (``.<name>.*.tmp``) are removed on claim.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import fnmatch
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

LOCK_NAME = ".run.lock"


@dataclass(frozen=True)
class Tree:
    """A folder of the command's whose file names are not fixed: the files directly inside that match
    one of ``patterns`` (shell patterns) are its; anything else there (a subfolder, notes) is the user's."""

    patterns: tuple[str, ...]

    def owns(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)


Layout = Mapping[str, Union[None, Tree, "Layout"]]  # name -> None (file) | Tree | nested layout
ANY_FOLDER = Tree(())  # a folder of unknown layout: none of its files are a run's, every ``.*.tmp`` is a temporary

DATASET_LAYOUT: Layout = {"train.npz": None, "test.npz": None}
# What one run writes (workflow.run); config.json first, so that it is also removed first. Lightning
# writes the checkpoints (epoch=..-step=...ckpt, last.ckpt) and the logger's files (csv or tensorboard).
RUN_LAYOUT: Layout = {
    "config.json": None, "metrics.json": None, "timing.json": None, "history.csv": None, "recon.npz": None,
    "reconstruction.png": None, "training.png": None,
    "checkpoints": Tree(("epoch=*.ckpt", "last.ckpt", "last-v*.ckpt", "interrupted.ckpt")),
    "logs": Tree(("metrics.csv", "hparams.yaml", "events.out.tfevents.*")),
    "ranks": Tree(("rank*.json",)), "data": DATASET_LAYOUT,
}
# A trained model applied to a data file (scripts.grid_lines_reconstruct).
RECONSTRUCTION_LAYOUT: Layout = dict.fromkeys(("config.json", "metrics.json", "recon.npz", "reconstruction.png"))
# The compare wrapper: its tables and pictures, its record of the cells, the shared dataset, one run
# folder per cell (and seed), and cells/ and logs/ (its own: the cells' config files and logs).
COMPARISON_TABLES = ("metrics_table.csv", "metrics_table.md", "comparison.png", "sweep.png", "sweep.json",
                     "commands.txt")
BASELINE_TREE = Tree(("baseline.json", "recon_*.npz"))  # the iterative baseline's rows and reconstructions


def comparison_layout(run_folders: Iterable[Path | str]) -> Layout:
    """``run_folders``: each run's folder relative to the comparison's (``runs/cnn``, ``runs/x/seed0``)."""
    layout: dict = {**dict.fromkeys(COMPARISON_TABLES), "data": DATASET_LAYOUT, "cells": Tree(("*.json",)),
                    "logs": Tree(("*.log",)), "baseline": BASELINE_TREE}
    for folder in run_folders:
        *parents, name = Path(folder).parts
        node = layout
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = RUN_LAYOUT
    return layout


_TEMPORARY = re.compile(r"^\..+\.tmp$")  # atomic_file's and the claim's temporary names


class OutputDirError(ValueError):
    """The output folder cannot be used: not a folder, not writable, not empty, or claimed by another run."""


def _refuse(path: Path, rule: str) -> OutputDirError:
    return OutputDirError(f"output_dir={str(path)!r}: {rule}")


def _not_empty(path: Path) -> OutputDirError:
    return _refuse(path, "folder is not empty; pass --overwrite to replace the previous run's files "
                         "(other files are kept) or choose a new folder")


# --- checks that touch nothing ---------------------------------------------------------------

def check_output_dir(path: Path, overwrite: bool, *, resume: bool = False) -> None:
    """Refuse a path the run could not create or write, or a non-empty folder without ``overwrite``
    (a run continued in its own folder, ``resume``, keeps what is there)."""
    path = Path(path)
    try:
        _check_output_dir(path, overwrite or resume)
    except OSError as err:  # a path the file system itself refuses to look at
        raise _refuse(path, f"cannot be used: {err.strerror or err}") from None


def _check_output_dir(path: Path, keep_content: bool) -> None:
    if not str(path).strip():
        raise _refuse(path, "must be a non-empty path")
    if "\0" in str(path):  # pathlib's tests answer False for such a path; os calls raise ValueError
        raise _refuse(path, "must not contain a NUL character")
    _check_name_lengths(path)
    if path.is_symlink() and not path.exists():
        raise _refuse(path, f"is a dangling symbolic link (to {os.readlink(path)!r})")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise _refuse(path, "exists and is not a folder" if existing == path.absolute()
                      else f"{str(existing)!r} is not a folder, so nothing can be created below it")
    if _read_only(existing):
        raise _refuse(path, f"{str(existing)!r} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _refuse(path, f"no permission to write in {str(existing)!r}")
    if existing == path.absolute() and _entries(existing) and not keep_content:
        holder = _live_holder(existing)
        if holder is not None:  # a run is writing there now: say who, not "pass --overwrite"
            raise _refuse(path, f"claimed by a running run ({_describe(holder)}); wait for it to end or choose "
                                "another folder")
        raise _not_empty(path)


def check_inputs_survive(path: Path, overwrite: bool, layout: Layout, inputs: Mapping[str, Path | None]) -> None:
    """Refuse an input file (``{field: path}``) that ``--overwrite`` would remove as a previous artifact."""
    if not overwrite:
        return  # without overwrite nothing is removed (and a folder holding inputs is refused as non-empty)
    folder = Path(path).resolve()
    for field, given in inputs.items():
        if given is None:
            continue
        owned = _owned_part(Path(given).resolve(), folder, layout)
        if owned is not None:
            raise OutputDirError(f"{field}={str(given)!r}: lies in {owned!r} of output_dir={str(path)!r}, which "
                                 "--overwrite removes before the run; copy it elsewhere or choose another folder")


# Names that mark a folder as one command's: another command's --overwrite there would leave them
# beside its own files (a study's tables beside a run, a run's checkpoints beside a study).
SIGNATURES = {"history.csv": "a training run", "checkpoints": "a training run", "recon.npz": "a reconstruction",
              "sweep.json": "a comparison study"}


def check_no_other_output(path: Path, overwrite: bool, layout: Layout) -> None:
    """Refuse, for an ``--overwrite`` with ``layout``, a folder holding what another command writes
    (a name of SIGNATURES that ``layout`` does not list), or, under a name ``layout`` lists, what no
    run wrote (``check_overwrite_targets``)."""
    if not overwrite:
        return  # without overwrite a non-empty folder is refused anyway
    held = [name for name in SIGNATURES if name not in layout and _exists(Path(path) / name)]
    if held:
        kinds = sorted({SIGNATURES[name] for name in held})
        raise OutputDirError(f"output_dir={str(path)!r}: holds the files of {' and '.join(kinds)} ({', '.join(held)}), "
                             "which --overwrite would leave beside this command's own; write to a folder of its own")
    if Path(path).is_dir():
        check_overwrite_targets(Path(path), layout)


# A command's own records, known by their content: a file of one of these names that reads as JSON
# without any of the keys (or, for the CSV, with another header) was put there by someone else. One
# that does not read at all is taken for a damaged record (written atomically, a run's never is
# half-written, but a user may have cut one short) and is removed as the run's.
RECORD_KEYS = {"config.json": ("training",), "metrics.json": ("status", "mean", "per_object"),
               "timing.json": ("fit_seconds", "reconstruct_seconds"), "sweep.json": ("cells",)}
RECORD_HEADERS = {"history.csv": "epoch,step,"}


def check_overwrite_targets(folder: Path, layout: Layout) -> None:
    """Refuse an ``--overwrite`` of ``folder`` where a name ``layout`` lists holds what the run can
    neither remove as its predecessor's nor write: a symbolic link (the run would write through it,
    into whatever it points to), a folder where the run writes a file or a file where it writes a
    folder (the run would fail after its work), a folder the run cannot write in, or a record that
    no run wrote (``RECORD_KEYS``). Checked before anything is removed; nothing is changed."""
    found = _foreign_entries(folder, layout)
    if found:
        raise OutputDirError(f"output_dir={str(folder)!r}: --overwrite would remove or write through what no run "
                             f"wrote there: {'; '.join(found)}; move it away or choose another folder")


def _foreign_entries(folder: Path, layout: Layout | Tree, prefix: str = "") -> list[str]:
    found = []
    names = (layout.items() if isinstance(layout, Mapping)
             else [(entry.name, None) for entry in sorted(folder.iterdir()) if layout.owns(entry.name)])
    for name, sub in names:
        entry, shown = folder / name, prefix + name
        if not _exists(entry):
            continue
        if entry.is_symlink():
            found.append(f"{shown} (a symbolic link, to {os.readlink(entry)!r})")
        elif sub is None and entry.is_dir():
            found.append(f"{shown} (a folder, where the run writes a file)")
        elif sub is not None and not entry.is_dir():
            found.append(f"{shown} (a file, where the run writes a folder)")
        elif sub is not None and (_read_only(entry) or not os.access(entry, os.W_OK | os.X_OK)):
            found.append(f"{shown} (a folder the run cannot write in)")
        elif sub is None and not _record_of_a_run(entry):
            found.append(f"{shown} (not a record this command writes)")
        elif sub is not None:
            found += _foreign_entries(entry, sub, f"{shown}/")
    return found


def _record_of_a_run(file: Path) -> bool:
    """Whether ``file`` may be a record a run wrote under its name (``RECORD_KEYS``, ``RECORD_HEADERS``)."""
    keys, header = RECORD_KEYS.get(file.name), RECORD_HEADERS.get(file.name)
    if keys is None and header is None:
        return True  # nothing to tell it by
    try:
        with file.open("rb") as handle:
            text = handle.read(1 << 20 if keys else 256).decode("utf-8")
        if not text.strip():
            return True  # empty: as damaged
        if header is not None:  # the header, or a file cut short inside it
            return text.startswith(header) or header.startswith(text)
        record = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return True  # unreadable: a damaged record, removed as the run's
    return isinstance(record, dict) and any(key in record for key in keys)


def _exists(path: Path) -> bool:
    """False also for a path the file system refuses to look at (the claim names that problem)."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return False


def _owned_part(file: Path, folder: Path, layout: Layout | str) -> str | None:
    """The artifact of ``layout`` that holds ``file`` (relative to ``folder``), or None."""
    try:
        parts = file.relative_to(folder).parts
    except ValueError:
        return None
    current: Layout | Tree = layout
    for depth, part in enumerate(parts):
        if isinstance(current, Tree):
            return "/".join(parts[:depth + 1]) if depth == len(parts) - 1 and current.owns(part) else None
        if part not in current:
            return None
        current = current[part]
        if current is None:
            return "/".join(parts[:depth + 1])
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a dangling link counts as absent)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():
            raise _refuse(path, f"{str(probe)!r} is a dangling symbolic link")
        probe = probe.parent
    return probe


def _check_name_lengths(path: Path) -> None:
    """Names and paths longer than the file system allows (checked before any lookup, which would fail)."""
    # the limits of the file system the folder goes on: that of its closest existing ancestor
    # (os.path.exists answers False, not an error, for a name too long to look up)
    existing = next(folder for folder in (path.absolute(), *path.absolute().parents) if os.path.exists(folder))
    name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    long_names = [part for part in path.parts if len(os.fsencode(part)) > name_max]
    if long_names:
        raise _refuse(path, f"a name is longer than the file system allows ({name_max} bytes): "
                            f"{long_names[0][:40]}...")
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise _refuse(path, f"the path is longer than the file system allows ({path_max} bytes)")


def _read_only(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


# --- the claim ---------------------------------------------------------------------------------

def _holder_text() -> str:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # not a claim this code wrote
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")


def _live_holder(folder: Path) -> dict | None:
    """The holder of ``folder``'s claim while its run is alive (it holds the lock), else None."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # only looking: released at once
        except BlockingIOError:
            return _read_holder(fd)
        return None
    finally:
        os.close(fd)


def _new_claim_file(folder: Path) -> tuple[int, Path]:
    """A temporary claim file with our details, already locked: linking it in claims atomically."""
    temporary = folder / f"{LOCK_NAME}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, _holder_text().encode())
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, temporary


def _acquire(folder: Path, overwrite: bool, log: Callable[[str], None]) -> int:
    """Claim ``folder``; the returned descriptor holds the lock until ``_release``."""
    lock = folder / LOCK_NAME
    while True:
        fd, temporary = _new_claim_file(folder)
        try:
            try:
                os.link(temporary, lock)
                return fd
            except FileExistsError:
                if _take_over(lock, fd, temporary, overwrite, log):
                    return fd
        except BaseException:
            os.close(fd)
            raise
        finally:
            temporary.unlink(missing_ok=True)
        os.close(fd)  # the claim vanished while we looked: try again


def _take_over(lock: Path, fd: int, temporary: Path, overwrite: bool, log: Callable[[str], None]) -> bool:
    """Examine the existing claim: refuse a live or foreign one; replace a stale one under ``overwrite``.

    False when the claim file disappeared meanwhile (the caller retries)."""
    try:
        old = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        holder = _read_holder(old)
        try:
            fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refuse(lock.parent, f"claimed by a running run ({_describe(holder)}); wait for it to end "
                                       "or choose another folder") from None
        if not _same_file(old, lock):
            return False  # released (unlinked) between our open and our lock
        if holder.get("host") != socket.gethostname():
            raise _refuse(lock.parent, f"claimed from another host ({_describe(holder)}); whether that run "
                                       f"is alive cannot be checked from here: remove {LOCK_NAME} if it is over")
        if not overwrite:
            raise _refuse(lock.parent, f"holds a claim left by a run that ended without releasing it "
                                       f"({_describe(holder)}); pass --overwrite to take the folder over")
        log(f"note: taking over {lock.parent}: its claim was left by a run that is gone ({_describe(holder)})")
        os.replace(temporary, lock)
        return True
    finally:
        os.close(old)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _release(folder: Path, fd: int) -> None:
    try:
        if _same_file(fd, folder / LOCK_NAME):
            (folder / LOCK_NAME).unlink()
    finally:
        os.close(fd)


# --- cleaning ----------------------------------------------------------------------------------

def _temporary_of(name: str, layout: Layout | Tree) -> bool:
    """Whether ``name`` is a temporary of an atomic write (``.<artifact>.<random>.tmp``) in a folder
    with ``layout``; in a Tree (names not fixed), every ``.*.tmp`` is."""
    if not _TEMPORARY.match(name):
        return False
    if isinstance(layout, Tree):
        return True
    return any(name.startswith(f".{artifact}.") for artifact, sub in layout.items() if sub is None)


def _dead_claim_temporary(name: str) -> bool:
    """A claim's temporary (``.run.lock.<pid>.<hex>.tmp``) whose process is gone."""
    match = re.fullmatch(re.escape(LOCK_NAME) + r"\.(\d+)\.[0-9a-f]+\.tmp", name)
    return match is not None and not _alive(int(match.group(1)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temporaries(folder: Path, layout: Layout | Tree) -> list[Path]:
    """Remove the temporary files interrupted writes left in ``folder`` and in the folders of its layout."""
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            continue
        if entry.is_file() and (_temporary_of(entry.name, layout) or _dead_claim_temporary(entry.name)):
            entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and isinstance(layout, Mapping) and isinstance(layout.get(entry.name), (Mapping, Tree)):
            removed += remove_temporaries(entry, layout[entry.name])
    return removed


def _entries(folder: Path, layout: Layout | Tree = ANY_FOLDER) -> list[Path]:
    """What ``folder`` holds, but for a claim and the temporaries of interrupted writes."""
    return sorted(p for p in folder.iterdir() if p.name != LOCK_NAME and not _temporary_of(p.name, layout)
                  and not p.name.startswith(LOCK_NAME + "."))


def remove_previous_run(folder: Path, layout: Layout | Tree) -> tuple[list[Path], list[Path]]:
    """Remove the artifacts ``layout`` lists (in its order; in a Tree the files it owns); return
    (removed, left alone)."""
    removed, kept = [], []
    present = {entry.name: entry for entry in _entries(folder, layout)}
    names = layout.items() if isinstance(layout, Mapping) else [(name, None) for name in present if layout.owns(name)]
    for name, sub in names:
        entry = present.pop(name, None)
        if entry is None:
            continue
        if entry.is_symlink() or (sub is None) == entry.is_dir():
            kept.append(entry)  # not what a run writes under this name: the user's
        elif sub is None:
            entry.unlink()
            removed.append(entry)
        else:
            inner_removed, inner_kept = remove_previous_run(entry, sub)
            removed += inner_removed
            kept += inner_kept
            if not inner_kept and not _entries(entry, sub):
                shutil.rmtree(entry)  # empty but for a stale claim or temporaries
                removed.append(entry)
    return removed, kept + sorted(present.values())


def _claim_nested(folder: Path, layout: Layout | Tree, log: Callable[[str], None]) -> list[tuple[Path, int]]:
    """Claim every folder below ``folder`` that ``layout`` nests (a study's run folders, its data):
    another command may be writing in one (a runner started from a study's commands.txt), and
    removing its files under it would mix two runs. A live or foreign claim there is refused
    naming it; a stale one is taken over. Returns the claims held, deepest last."""
    held: list[tuple[Path, int]] = []
    if not isinstance(layout, Mapping):
        return held
    try:
        for name, sub in layout.items():
            entry = folder / name
            if isinstance(sub, Mapping) and entry.is_dir() and not entry.is_symlink():
                try:
                    held.append((entry, _acquire(entry, True, log)))
                except FileNotFoundError:
                    continue  # gone meanwhile: nothing of it to remove, nobody to refuse
                except OSError as err:
                    raise _refuse(entry, f"cannot be claimed: {os.strerror(err.errno or errno.EIO)}") from None
                held += _claim_nested(entry, sub, log)
    except BaseException:
        for path, fd in reversed(held):
            _release(path, fd)
        raise
    return held


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def claimed(path: Path, overwrite: bool, layout: Layout, log: Callable[[str], None] = _stderr, *,
            resume: bool = False) -> Iterator[Path]:
    """Create and claim ``path`` for one run; with ``overwrite`` clear the previous run's artifacts first.

    ``resume``: the folder holds the run being continued; its files stay, and a claim its killed
    process left behind is taken over."""
    path = Path(path)
    check_output_dir(path, overwrite, resume=resume)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, overwrite or resume, log)
    except OSError as err:
        raise _refuse(path, f"cannot be created or claimed: {os.strerror(err.errno or errno.EIO)}") from None
    try:
        remove_temporaries(path, layout)
        if _entries(path, layout) and not (overwrite or resume):
            raise _not_empty(path)
        if overwrite:
            nested = _claim_nested(path, layout, log)  # a live run in one of them refuses before anything goes
            try:
                check_overwrite_targets(path, layout)  # again under the claims: the folder may have changed
                _, kept = remove_previous_run(path, layout)
            finally:
                for folder, nested_fd in reversed(nested):
                    _release(folder, nested_fd)
            if kept:
                log(f"note: left alone in {path} (not written by a run): "
                    + ", ".join(str(p.relative_to(path)) for p in kept))
        yield path
    finally:
        _release(path, fd)
