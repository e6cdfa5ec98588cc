"""Sweeps for the compare wrapper: swept settings x seeds -> cells, each one runner config and folder.

    --sweep torch-grad-clip=none,0.1,1 --sweep torch-grad-clip-algorithm=norm,agc --seeds 0,1,2

A sweep names any wrapper flag (without its dashes) and its values, parsed exactly as that flag
would parse them; several sweeps form a grid, and ``--seeds`` replicates every cell (the training
seed). A cell's folder is ``runs/<name>`` (``runs/<name>/seed<k>`` with ``--seeds``), the name
made of the swept values. ``sweep.json`` records the cells, so that the same command run again
finds its finished runs (see ``cell_state``). Torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptycho_torch.config import FIELD_RULES, clipping_enabled, to_jsonable
from scripts.studies.runner_cli import ascii_number, value_parser

SWEEP_RECORD = "sweep.json"
# Settings with two spellings of one value: cells of both would be the same run twice.
SAME_MEANING: dict[str, Callable[[Any], Any]] = {"gradient_clip_val": lambda v: v if clipping_enabled(v) else None}
NOT_SWEPT = ("output_dir", "overwrite")  # where the runs go is the wrapper's
FINISHED, RESUMABLE, FRESH = "finished", "resumable", "fresh"
# A record that cannot be read as the one expected: missing, not JSON (or nested past the parser's
# recursion limit), another shape.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, RecursionError)


@dataclass(frozen=True)
class Sweep:
    name: str  # the runner field
    flag: str  # the wrapper flag as given, without dashes (torch-grad-clip)
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Cell:
    assignments: tuple[tuple[str, Any], ...]  # (field, value) per sweep, in the order given
    seed: int | None  # None: the seed of the settings (no --seeds)
    folder: Path  # relative to the wrapper's output folder


def parse_sweep(text: str, cls: type, flags: dict[str, str]) -> Sweep:
    """``FLAG=v1,v2,...`` -> Sweep; ``flags``: wrapper flag (any spelling, no dashes) -> field name.
    Raises ValueError naming the flag and the rule."""
    flag, sep, values_text = text.partition("=")
    flag = flag.strip().lstrip("-")
    if not sep or not flag:
        raise ValueError(f"--sweep={text!r}: expected FLAG=v1,v2,... (e.g. torch-grad-clip=none,0.1,1)")
    if flag not in flags or flags[flag] in NOT_SWEPT:
        close = difflib.get_close_matches(flag, [f for f, name in flags.items() if name not in NOT_SWEPT], n=1)
        raise ValueError(f"--sweep={text!r}: {flag!r} is not a setting that can be swept"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    name = flags[flag]
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    parse = value_parser(cls, field)
    texts = [v.strip() for v in values_text.split(",")]
    if not values_text.strip() or any(not v for v in texts):
        raise ValueError(f"--sweep={text!r}: give one or more comma-separated values")
    try:
        values = tuple(parse(v) for v in texts)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"--sweep={text!r}: {err}") from None
    meaning = SAME_MEANING.get(name, lambda value: value)
    if len(set(repr(v) for v in values)) != len(values):
        raise ValueError(f"--sweep={text!r}: a value is given twice")
    if len(set(repr(meaning(v)) for v in values)) != len(values):
        raise ValueError(f"--sweep={text!r}: two values mean the same run (none and 0 both mean off)")
    return Sweep(name, flag, values)


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(ascii_number(int, v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--seeds={text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds={text!r}: a seed is given twice")
    for seed in seeds:
        _, rule = FIELD_RULES["seed"](seed)  # the training seed's own rule, named by this flag
        if rule is not None:
            raise ValueError(f"--seeds={text!r}: seed {seed} {rule}")
    return seeds


def value_word(value: Any) -> str:
    """A value as a folder-name word: none, 0.1, 1, agc, a path's file name."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, Path):
        value = value.name
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-") or "x"


def sweep_words(sweep: Sweep) -> dict[str, str]:
    """repr(value) -> its word in folder names; words that would repeat (two probe files of one
    name in different folders) are told apart by the value's position: ``1-probe.npz``."""
    words = [value_word(v) for v in sweep.values]
    if len(set(words)) < len(words):
        words = [f"{i}-{word}" for i, word in enumerate(words)]
    return {repr(v): word for v, word in zip(sweep.values, words)}


def cell_name(sweeps: Sequence[Sweep], values: Sequence[Any]) -> str:
    """The folder name of one combination: the value alone for a lone sweep of the architecture,
    else ``flag=value`` pairs (flags without their ``torch-``) joined by ``_``."""
    words = [sweep_words(s)[repr(v)] for s, v in zip(sweeps, values)]
    if len(sweeps) == 1 and sweeps[0].name == "architecture":
        return words[0]
    return "_".join(f"{s.flag.removeprefix('torch-')}={word}" for s, word in zip(sweeps, words))


def cells_of(sweeps: Sequence[Sweep], seeds: Sequence[int] | None) -> list[Cell]:
    """Every combination of the sweeps' values (first sweep outermost), times every seed. Names
    show the sweeps with several values (or the first sweep, when none has)."""
    named = [i for i, s in enumerate(sweeps) if len(s.values) > 1] or [0]
    cells = []
    for values in itertools.product(*(s.values for s in sweeps)):
        name = cell_name([sweeps[i] for i in named], [values[i] for i in named])
        assignments = tuple((s.name, v) for s, v in zip(sweeps, values))
        for seed in seeds or (None,):
            folder = Path("runs") / name / (f"seed{seed}" if seed is not None else "")
            cells.append(Cell(assignments, seed, Path(str(folder).rstrip("/"))))
    return cells


def cell_config(cell: Cell, base: dict[str, Any], output_dir: Path, build: Callable[..., Any]) -> Any:
    """The runner config of ``cell``: ``base`` settings, the cell's values, its seed and folder."""
    values = {**base, **dict(cell.assignments), "output_dir": output_dir / cell.folder}
    if cell.seed is not None:
        values["seed"] = cell.seed
    return build(**values)


# --- finding a sweep's finished runs again -----------------------------------------------------------

def record_of(configs: Sequence[Any], root: Path) -> dict[str, Any]:
    """sweep.json: each cell's runner settings, as its run records them (``NOT_IDENTITY`` aside), with
    its folder relative to the study's folder ``root``: a study moved or copied elsewhere (from a
    cluster's scratch space, say) is the same study."""
    return {"cells": [_identity(to_jsonable(cfg), Path(cfg.output_dir).resolve(), root) for cfg in configs]}


# How a run is claimed, shown or spread over threads, not what it computes: a restart with another
# --jobs (threads per process) or on a node with other cores is the same study.
NOT_IDENTITY = ("overwrite", "num_threads", "enable_progress_bar")


# The settings that name input files: one file however spelled (relative to the working directory,
# or absolute as a study's cell files give them)
INPUT_FILES = ("train_npz", "test_npz", "probe_npz")


def _settings(runner: dict[str, Any]) -> dict[str, Any]:
    """What a run computes: its settings but ``NOT_IDENTITY`` and where it is written, its input files
    as absolute paths."""
    kept = {k: v for k, v in runner.items() if k not in (*NOT_IDENTITY, "output_dir")}
    for name in INPUT_FILES:
        if isinstance(kept.get(name), str):
            kept[name] = str(Path(kept[name]).resolve())
    return kept


def _identity(runner: dict[str, Any], folder: Path, root: Path) -> dict[str, Any]:
    """A cell of a sweep record: ``_settings`` and its (absolute, resolved) ``folder`` relative to the
    study's ``root`` (runs/x and /abs/.../runs/x are one folder), or absolute when outside it."""
    base = Path(root).resolve()
    return {**_settings(runner), "output_dir": str(folder.relative_to(base)) if folder.is_relative_to(base)
            else str(folder)}


def _recorded_cells(folder: Path) -> list[dict[str, Any]]:
    """The cells ``folder``'s sweep.json records, as ``record_of`` writes them (records made before
    the folders were relative hold absolute ones: read relative to ``folder`` where they lie in it).
    Raises one of UNREADABLE."""
    base = Path(folder).resolve()
    cells = json.loads((base / SWEEP_RECORD).read_text())["cells"]
    return [_identity(cell, (base / cell["output_dir"]).resolve(), base) for cell in cells]


def same_sweep(folder: Path, configs: Sequence[Any]) -> bool | None:
    """None: no sweep recorded in ``folder``; else whether it records exactly these cells."""
    if not (Path(folder) / SWEEP_RECORD).is_file():
        return None
    try:
        return _recorded_cells(folder) == json.loads(json.dumps(record_of(configs, folder)))["cells"]
    except UNREADABLE:
        return False


def sweep_readable(folder: Path) -> bool:
    """Whether ``folder``'s sweep.json reads as a study's record of cells."""
    try:
        _recorded_cells(folder)
    except UNREADABLE:
        return False
    return True


def recorded_folders(folder: Path) -> list[Path]:
    """The run folders (relative to ``folder``) of the study recorded there, if any: what an
    ``--overwrite`` of it removes besides the new study's own."""
    try:
        folders = [Path(cell["output_dir"]) for cell in _recorded_cells(folder)]
    except UNREADABLE:
        return []
    return [run for run in folders if not run.is_absolute() and run != Path(".")]


def record_mismatch(cfg: Any) -> str | None:
    """Why the folder of ``cfg`` does not hold this cell's run (no readable config.json, or one of other
    settings); None when its config.json records exactly these settings."""
    folder = Path(cfg.output_dir)
    try:
        recorded = json.loads((folder / "config.json").read_text())["runner"]
    except FileNotFoundError:
        return "no config.json: the run did not start"
    except UNREADABLE as err:
        return f"its config.json cannot be read ({type(err).__name__})"
    if not isinstance(recorded, dict):
        return "its config.json cannot be read (its runner settings are not a mapping)"
    if _settings(recorded) != json.loads(json.dumps(_settings(to_jsonable(cfg)))):  # where it was written aside:
        # the record lies in the folder it describes, which may have moved with its study
        return "its config.json records other settings than this cell's (another run wrote the folder)"
    return None


def cell_state(cfg: Any) -> str:
    """FINISHED (a run of this very config whose records read back), RESUMABLE (its epoch-end
    checkpoint, no results yet) or FRESH (anything else, a damaged finished record included: rerun)."""
    from scripts.studies.study_table import MISSING, run_row  # it imports this module

    if record_mismatch(cfg) is not None:
        return FRESH
    folder = Path(cfg.output_dir)
    if run_row(folder, "", None, {})["status"] != MISSING:
        return FINISHED
    resumable = (folder / "checkpoints" / "last.ckpt").is_file() and not (folder / "metrics.json").exists()
    return RESUMABLE if resumable else FRESH
