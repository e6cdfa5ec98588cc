"""Compare architectures, or sweep any setting over seeds, on one grid-lines dataset.

    python -m scripts.studies.grid_lines_compare_wrapper --architectures cnn,fno,hybrid \\
        --output-dir runs/compare --torch-grad-clip 1.0
    python -m scripts.studies.grid_lines_compare_wrapper --architectures cnn --seeds 0,1,2 --jobs 2 \\
        --sweep torch-grad-clip=none,0.1,1 --sweep torch-grad-clip-algorithm=norm,agc --output-dir runs/clip

Every cell (a combination of swept values, times each seed) is one runner config run through the
runner's API into ``<output_dir>/runs/<cell>[/seed<k>]/``; then ``metrics_table.csv`` / ``.md``
(one row per run, mean and std per cell), ``sweep.png`` and ``comparison.png`` are written. With
``--jobs 1`` the cells run in this process and share one simulated dataset; with ``--jobs K`` each
cell is the runner command that ``--emit-commands`` writes, K at a time. Flags come from the
runner's field declarations: dataset settings keep their runner flag (``--object-size``),
training/model/execution settings get ``--torch-<flag>``. ``--baseline 50,200`` adds rows of an
iterative reference reconstruction of the same test split (``scripts.studies.baselines``). No torch
at import time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptycho_torch.config import ARCHITECTURES, ConfigError, shown_value
from ptycho_torch.output_folder import OutputDirError
from scripts.studies.grid_lines_torch_runner import (
    TorchRunnerConfig, ignored_given, inert_runner_settings, plan_of, resolved_json, setup_simulation_config,
    warn_ignored,
)
from scripts.studies.runner_cli import (
    FAILED_RUN, add_config_argument, add_setting_arguments, config_error_message, exit_with, integer_at_least,
    new_parser, nonempty_path, outcome_status, run_command, settings_given,
)
from scripts.studies.runner_fields import flag_of, flags_of, route_of
from scripts.studies.baselines import (
    INITS, MAX_ITERATIONS, flat_recon, parse_iterations, read_baseline_rows, remove_stale_baseline, run_baselines,
)
from scripts.studies.study_table import markdown, missing_row, run_row, shown_columns, sweep_series, write_tables
from scripts.studies.sweep import (
    FINISHED, FRESH, INPUT_FILES, RESUMABLE, SWEEP_RECORD, Cell, Sweep, cell_config, cell_state, cells_of,
    parse_seeds, parse_sweep, record_mismatch, record_of, recorded_folders, same_sweep, sweep_readable,
    value_word,
)

TORCH_PREFIX = "--torch-"
WRAPPER_OWNED = ("architecture", "output_dir", "overwrite")  # set per row or by the wrapper's own flags


def _fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TorchRunnerConfig) if f.name not in WRAPPER_OWNED]


def is_torch_setting(f: dataclasses.Field) -> bool:
    """Settings that reach the model, training or execution configs get a --torch- flag."""
    return bool(set(route_of(f).to) & {"model", "training", "execution"})


def wrapper_flags() -> dict[str, str]:
    return {f.name: flag_of(f, TORCH_PREFIX if is_torch_setting(f) else "--") for f in _fields()}


def sweep_flags() -> dict[str, str]:
    """Every wrapper flag spelling, without dashes -> runner field (architecture: torch-architecture)."""
    return {flag[2:]: f.name for f in dataclasses.fields(TorchRunnerConfig)
            for flag in flags_of(f, TORCH_PREFIX if is_torch_setting(f) else "--")}


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "python -m scripts.studies.grid_lines_compare_wrapper",
        "Train several architectures (or any swept setting, over seeds) on one grid-lines dataset and compare them.",
        usage="%(prog)s --architectures cnn,fno,hybrid --output-dir PATH [--sweep FLAG=V1,V2] [--seeds 0,1,2] [...]")
    parser.add_argument("--architectures", default=None,
                        help=f"comma-separated subset of {','.join(ARCHITECTURES)} (default: all); the same as "
                             "--sweep torch-architecture=...")
    parser.add_argument("--sweep", action="append", default=[], metavar="FLAG=V1,V2,...",
                        help="run every value of a wrapper flag (without dashes: torch-grad-clip=none,0.1,1 or "
                             "data-seed=0,1); repeat for a grid")
    parser.add_argument("--seeds", default=None, metavar="S1,S2,...",
                        help="training seeds: every cell is run once per seed (default: --torch-seed alone)")
    parser.add_argument("--jobs", type=integer_at_least(1), default=1,
                        help="cells run at once, each in its own process with cores/jobs torch threads (default: 1, "
                             "in this process)")
    parser.add_argument("--output-dir", type=nonempty_path, default=Path("runs/grid_lines_compare"),
                        help="folder for data/, runs/<cell>/ and the tables; the same command run again into it "
                             "skips finished cells and resumes or reruns the others")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="allow writing into a non-empty output folder (a previous comparison is removed)")
    parser.add_argument("--baseline", type=parse_iterations, default=None, metavar="ITERATIONS",
                        help="also reconstruct the test split with an iterative engine (cdtools-py, the 'baselines' "
                             "extra) from a flat start, scored after each of these iteration counts (e.g. 50,200; "
                             f"each from 1 to {MAX_ITERATIONS})")
    parser.add_argument("--baseline-init", choices=INITS, default=None,
                        help="pinn: also start the engine from each cell's stitched PINN reconstruction and report "
                             "the iterations and seconds to reach the flat start's phase SSIM (default: flat)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print each cell's resolved configs as JSON and exit")
    mode.add_argument("--emit-commands", action="store_true",
                      help="write cells/<cell>.json and commands.txt (one runner command per line, for a job array) "
                           "instead of running")
    mode.add_argument("--summarize", action="store_true",
                      help="build the tables and figures from the runs already in the output folder")
    add_config_argument(parser)  # its architecture, output_dir and overwrite are the wrapper's own: ignored
    data = parser.add_argument_group("dataset settings")
    add_setting_arguments(data, TorchRunnerConfig, [f for f in _fields() if not is_torch_setting(f)])
    torch_group = parser.add_argument_group("runner settings for every cell (--torch-<runner flag>)")
    add_setting_arguments(torch_group, TorchRunnerConfig, [f for f in _fields() if is_torch_setting(f)],
                          flag_prefix=TORCH_PREFIX)
    return parser


@dataclass(frozen=True)
class Study:
    sweeps: tuple[Sweep, ...]  # the architecture sweep first
    cells: tuple[Cell, ...]
    configs: tuple[TorchRunnerConfig, ...]  # one per cell, same order


COMMAND_ONLY = ("architectures", "sweep", "seeds", "jobs", "dry_run", "emit_commands", "summarize", "baseline",
                "baseline_init")


def parse_study(argv: Sequence[str] | None) -> tuple[Study, argparse.Namespace]:
    """Every cell's validated runner config; bad input (flag, sweep, value) exits 2 naming the flag."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        sweeps = [parse_sweep(text, TorchRunnerConfig, sweep_flags()) for text in ns.sweep]
        seeds = parse_seeds(ns.seeds) if ns.seeds is not None else None
    except ValueError as err:
        parser.error(str(err))
    names = [s.name for s in sweeps]
    if len(set(names)) != len(names):
        parser.error(f"--sweep: {sorted(n for n in names if names.count(n) > 1)[0]} is swept twice")
    if "architecture" in names and ns.architectures is not None:
        parser.error("--architectures and --sweep torch-architecture=... say the same: give one")
    if "seed" in names and seeds is not None:
        parser.error("--seeds and --sweep torch-seed=... say the same: give one")
    if ns.summarize and ns.overwrite:
        parser.error("--summarize reads the runs in --output-dir; --overwrite would remove them first")
    if ns.emit_commands and any(line_break in str(ns.output_dir) for line_break in "\n\r"):
        parser.error(f"--output-dir={str(ns.output_dir)!r}: --emit-commands writes one command per line, "
                     "and a path with a line break cannot be one")
    if "architecture" not in names:
        sweeps.insert(0, _architectures(parser, ",".join(ARCHITECTURES) if ns.architectures is None else ns.architectures))
    else:
        sweeps.insert(0, sweeps.pop(names.index("architecture")))
    given = settings_given(parser, ns, TorchRunnerConfig, command_only=(*COMMAND_ONLY, *WRAPPER_OWNED),
                           ignored=WRAPPER_OWNED)
    _warn_replaced(given, ns.given, sweeps, seeds)
    if ns.jobs > 1:
        from ptycho_torch.cpu_settings import usable_cores  # here: it loads torch, which the contract suite must not
        cores = usable_cores()
        if ns.jobs > cores:
            print(f"warning: --jobs {ns.jobs} runs {ns.jobs} training processes at once on this machine's {cores} "
                  f"usable core(s): they share them, so the study is slower than with --jobs {cores}",
                  file=sys.stderr)
        if "num_threads" not in given:  # K processes share the cores instead of each taking them all
            given["num_threads"] = max(1, cores // ns.jobs)
    cells = cells_of(sweeps, seeds)
    try:
        configs = [cell_config(cell, given, ns.output_dir,
                               lambda **values: TorchRunnerConfig(**values, overwrite=ns.overwrite)) for cell in cells]
        for cfg in configs:
            resolved_json(cfg)
    except ConfigError as err:
        parser.error(config_error_message(err, wrapper_flags()))
    study = Study(tuple(sweeps), tuple(cells), tuple(configs))
    _check_sweeps_act(parser, study)
    _check_baseline(parser, ns, study)
    return study, ns


def _warn_replaced(given: dict[str, Any], chosen: Sequence[str], sweeps: Sequence[Sweep],
                   seeds: tuple[int, ...] | None) -> None:
    """A setting the user gave (flag or --config) that a sweep (or --seeds) also sets takes the swept
    values in every cell: the given value is named in a warning rather than dropped unseen."""
    by = {s.name: "its --sweep" for s in sweeps}
    if seeds is not None:
        by["seed"] = "--seeds"
    flags = wrapper_flags()
    for name in chosen:
        if name in by and name in given:
            print(f"warning: {flags[name]}={shown_value(given[name])} is not used: each cell takes a value "
                  f"from {by[name]}", file=sys.stderr)


def _check_sweeps_act(parser: argparse.ArgumentParser, study: Study) -> None:
    """A swept setting that acts in no cell (``--sweep torch-momentum=0.5,0.8`` without sgd) would make
    its cells one run repeated: refused, as duplicate values are. One that acts in only some cells
    (``torch-fno-modes`` beside the cnn) is warned of: those cells repeat a run per value."""
    inert = [inert_runner_settings(cfg) for cfg in study.configs]
    for sweep in study.sweeps:
        if sweep.name == "architecture" or len(sweep.values) < 2:
            continue
        why = [found.get(sweep.name) for found in inert]
        if all(reason is not None for reason in why):
            parser.error(f"--sweep {sweep.flag}: has no effect in any cell of this study ({why[0]}), so its cells "
                         "would be the same run")
        idle = [cell_name_of(cell) for cell, reason in zip(study.cells, why) if reason is not None]
        if idle:
            reasons = "; ".join(sorted({reason for reason in why if reason is not None}))
            print(f"warning: --sweep {sweep.flag} has no effect in the cells {', '.join(dict.fromkeys(idle))} "
                  f"({reasons}): they repeat one run for each of its values", file=sys.stderr)


def _check_baseline(parser: argparse.ArgumentParser, ns: argparse.Namespace, study: Study) -> None:
    """--baseline needs one dataset and the engine; --baseline-init needs --baseline."""
    if ns.baseline_init is not None and ns.baseline is None:
        parser.error("--baseline-init: give --baseline ITERATIONS too (the iteration counts to report)")
    if ns.baseline is None:
        return
    if ns.summarize or ns.emit_commands:
        parser.error("--baseline runs the iterative engine; --summarize reads the baseline rows a run left and "
                     "--emit-commands writes runner commands only")
    if not _one_dataset(study):
        parser.error("--baseline: the study's cells use several datasets (a swept data setting); the iterative "
                     "baseline reconstructs one test split")
    from ptycho_torch.baseline import EngineMissing, engine

    try:
        engine()
    except EngineMissing as err:
        parser.error(f"--baseline: {err}")


def _architectures(parser: argparse.ArgumentParser, text: str) -> Sweep:
    architectures = [a.strip() for a in text.split(",")]  # an empty item is refused, as --sweep's are
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown or len(set(architectures)) != len(architectures):
        parser.error(f"--architectures={text!r}: must be distinct names from {','.join(ARCHITECTURES)}")
    return Sweep("architecture", "torch-architecture", tuple(architectures))


def ignored_by_every_row(rows: Sequence[TorchRunnerConfig], given: Sequence[str]) -> dict[str, str]:
    """Given settings that no cell of the study can use (fno sizes for cnn cells alone)."""
    per_row = [ignored_given(cfg, given) for cfg in rows]
    return {name: why for name, why in per_row[0].items() if all(name in ignored for ignored in per_row)}


# --- running a study -------------------------------------------------------------------------------

def run_study(study: Study, output_dir: Path, overwrite: bool, given: Sequence[str] = (), jobs: int = 1,
              mode: str = "run", baseline: tuple[tuple[int, ...], str | None] | None = None
              ) -> list[dict[str, Any]] | None:
    """Check every cell, claim ``output_dir``, run the cells that are not finished, write the tables.

    ``mode``: "run", "emit" (write the cells' config files and commands.txt) or "summarize" (tables
    from the runs present). The same study run again into its folder (sweep.json unchanged) keeps
    the finished runs, resumes those with an epoch-end checkpoint and reruns the rest. ``baseline``:
    (iteration counts, init) of ``--baseline`` / ``--baseline-init``, run after the cells."""
    from ptycho_torch import artifacts, workflow
    from ptycho_torch.output_folder import (
        check_inputs_survive, check_no_other_output, check_output_dir, claimed, comparison_layout,
    )

    check_output_dir(output_dir, overwrite=True)  # a path the file system refuses, before looking inside it
    recorded = same_sweep(output_dir, study.configs)
    if mode == "summarize" and recorded is None:
        raise OutputDirError(f"output_dir={str(output_dir)!r}: nothing to summarize (no study recorded there: "
                             f"no {SWEEP_RECORD})")
    continuing = not overwrite and (recorded is True or mode == "summarize")
    if recorded is False and not overwrite:
        why = (f"its {SWEEP_RECORD} lists other cells" if sweep_readable(output_dir)
               else f"its {SWEEP_RECORD} does not read as a study's record: damaged, or another program's")
        raise OutputDirError(f"output_dir={str(output_dir)!r}: holds another study ({why}); pass --overwrite to "
                             "replace it or choose another folder")
    check_output_dir(output_dir, overwrite, resume=continuing)
    layout = comparison_layout([*recorded_folders(output_dir), *(cell.folder for cell in study.cells)])
    check_no_other_output(output_dir, overwrite, layout)
    states = [cell_state(cfg) if continuing else FRESH for cfg in study.configs]
    plans = [_plan(cfg, state, continuing, given) for cfg, state in zip(study.configs, states)]
    data, one_dataset = None, _one_dataset(study)
    if mode == "run":
        for plan, state in zip(plans, states):  # each cell's folder too: a file where runs/<cell> goes is refused now
            if state != FINISHED:
                data = workflow.prepare(plan, data if one_dataset else None)
    check_inputs_survive(output_dir, overwrite, layout, workflow.input_files(plans[0]))
    with claimed(output_dir, overwrite, layout, resume=continuing) as out:
        if mode != "summarize":
            artifacts.write_json(out / SWEEP_RECORD, record_of(study.configs, out))
        if mode == "emit":
            write_commands(out, study, states)
            return None
        if mode == "run":
            remove_stale_baseline(out)
            todo = [i for i, state in enumerate(states) if state != FINISHED]
            if jobs == 1:
                run_in_process(study, plans, todo, out, one_dataset)
            else:
                run_in_processes(study, states, todo, out, jobs)
            if baseline is not None:  # the runs' tables first: a baseline cut short leaves them complete
                write_study_results(out, study, one_dataset)
                run_study_baseline(out, study, plans, *baseline)
        return write_study_results(out, study, one_dataset, with_baseline=baseline is not None or mode == "summarize")


def run_study_baseline(out: Path, study: Study, plans: Sequence[Any], counts: tuple[int, ...], init: str | None) -> None:
    """The iterative rows on the study's test split (the given file, the shared simulation, or the
    first run's copy), warm-started from each cell's first-seed reconstruction with init ``pinn``."""
    import numpy as np

    from ptycho_torch.npz_data import load_npz

    candidates = [plans[0].test_npz, out / "data" / "test.npz", *(out / c.folder / "data" / "test.npz" for c in study.cells)]
    test_npz = next((path for path in candidates if path is not None and Path(path).is_file()), None)
    if test_npz is None:
        print("warning: --baseline: no run left a test split to reconstruct; no baseline rows", file=sys.stderr)
        return
    test_data = load_npz(test_npz, "test", expected_N=plans[0].training.model.N)
    if plans[0].train_npz is None and _simulated_otherwise(test_data, plans[0].simulation):
        from ptycho_torch.simulation import simulate_splits

        print(f"warning: --baseline: {test_npz} holds another simulation than the study's (its settings were "
              "changed since); the baseline reconstructs the study's test split, simulated again", file=sys.stderr)
        test_data = simulate_splits(plans[0].simulation)["test"]
    warm = {}
    for cell, cfg in first_seeds(study) if init == "pinn" else []:
        metrics = cfg.output_dir / "metrics.json"
        status = json.loads(metrics.read_text())["status"] if metrics.is_file() else "missing"
        if status != "ok":  # a missing, collapsed (constant) or untrained start says nothing about the PINN
            print(f"warning: --baseline-init pinn: run {cell.folder} has status {status}; no warm start from it",
                  file=sys.stderr)
            continue
        with np.load(cfg.output_dir / "recon.npz") as saved:
            warm[cell_name_of(cell)] = saved["recon"]
    run_baselines(out, test_data, counts, warm, plans[0].execution, seed=plans[0].training.seed)


def _simulated_otherwise(data: Any, simulation: Any) -> bool:
    """Whether ``data``'s metadata records other simulation settings than ``simulation``'s (a file
    written over the study's ``data/`` by hand, say): its runs were scored on another test split."""
    from ptycho_torch.config import to_jsonable

    wanted = json.loads(json.dumps(to_jsonable(simulation)))
    return any(data.metadata.get(name) != value for name, value in wanted.items())


def _plan(cfg: TorchRunnerConfig, state: str, continuing: bool, given: Sequence[str]):
    """A cell's plan: resumed from its checkpoint, or written afresh (over a partial run when continuing)."""
    if state == RESUMABLE:
        return plan_of(cfg, given, resume=True)
    return plan_of(dataclasses.replace(cfg, overwrite=True) if continuing else cfg, given)


def _one_dataset(study: Study) -> bool:
    """Every cell reads the same files, or (no files given) simulates with the same settings."""
    return len({(cfg.train_npz, cfg.test_npz) if cfg.train_npz is not None else setup_simulation_config(cfg)
                for cfg in study.configs}) == 1


def run_in_process(study: Study, plans: Sequence[Any], todo: Sequence[int], out: Path, one_dataset: bool) -> None:
    """The cells in turn, in this process; cells with the same dataset settings share one simulation
    (written to ``data/`` when the study has a single dataset)."""
    from ptycho_torch import workflow
    from ptycho_torch.npz_data import DataError
    from ptycho_torch.outcome import NonFiniteGradientError

    datasets: dict[Any, Any] = {}
    with _progress(len(study.cells), len(study.cells) - len(todo)) as bar:
        for index in todo:
            plan = plans[index]
            data = datasets.get(plan.simulation)
            if data is None and plan.train_npz is None:
                data = workflow.load_or_simulate(plan, out / "data" if one_dataset else None)
                datasets[plan.simulation] = data
            try:
                workflow.run(plan, data=data)
            except NonFiniteGradientError as err:  # this cell stopped without results; the others still run
                print(f"warning: cell {study.cells[index].folder} stopped: {err}", file=sys.stderr)
            except (ConfigError, DataError, OutputDirError) as err:  # its folder or checkpoint refused, as a
                # cell's own process (--jobs K) would exit 2: that cell is missing, the others still run
                print(f"warning: cell {study.cells[index].folder} refused: {err}", file=sys.stderr)
            bar.update(1)


def cell_file(out: Path, cell: Cell) -> Path:
    return out / "cells" / ("_".join(cell.folder.parts[1:]) + ".json")


def cell_command(out: Path, cell: Cell, state: str = FRESH) -> list[str]:
    """The runner command of one cell (``--resume`` or ``--overwrite`` when its folder holds a partial run)."""
    runner = [sys.executable, "-m", "scripts.studies.grid_lines_torch_runner"]
    out = out.resolve()  # the commands run from any folder (a job array's working directory is its own)
    if state == RESUMABLE:  # its own record: execution-only settings (threads) may differ from this command's
        return [*runner, "--resume", "--output-dir", str(out / cell.folder)]
    command = [*runner, "--config", str(cell_file(out, cell))]
    return [*command, "--overwrite"] if (out / cell.folder).exists() else command


def write_cell_files(out: Path, study: Study) -> None:
    """cells/<cell>.json: each cell's runner settings, as a run's config.json records them."""
    from ptycho_torch import artifacts
    from ptycho_torch.config import to_jsonable

    (out / "cells").mkdir(exist_ok=True)
    for cell, cfg in zip(study.cells, study.configs):
        absolute = {name: Path(getattr(cfg, name)).resolve() for name in ("output_dir", *INPUT_FILES)
                    if getattr(cfg, name) is not None}  # the command runs from any folder
        artifacts.write_json(cell_file(out, cell), {"runner": to_jsonable(dataclasses.replace(
            cfg, overwrite=False, **absolute))})


def write_commands(out: Path, study: Study, states: Sequence[str]) -> None:
    """cells/*.json and commands.txt: one runner command per unfinished cell, one per line."""
    from ptycho_torch import artifacts

    write_cell_files(out, study)
    lines = [shlex.join(cell_command(out, cell, state)) for cell, state in zip(study.cells, states) if state != FINISHED]
    with artifacts.atomic_file(out / "commands.txt", "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
    print(f"wrote {len(lines)} runner command(s) to {out / 'commands.txt'}; afterwards, the same wrapper command "
          "with --summarize builds the tables")


def run_in_processes(study: Study, states: Sequence[str], todo: Sequence[int], out: Path, jobs: int) -> None:
    """The unfinished cells' runner commands, ``jobs`` at a time; each logs to logs/<cell>.log. A
    signal to this process stops the running cells too (they keep their epoch-end checkpoints)."""
    write_cell_files(out, study)
    (out / "logs").mkdir(exist_ok=True)
    waiting = list(todo)
    running: dict[int, subprocess.Popen] = {}
    try:
        with _progress(len(study.cells), len(study.cells) - len(todo)) as bar:
            while waiting or running:
                while waiting and len(running) < jobs:
                    index = waiting.pop(0)
                    cell = study.cells[index]
                    # appended: a restart keeps the log of the attempt it continues
                    log = open(out / "logs" / (cell_file(out, cell).stem + ".log"), "a")  # noqa: SIM115
                    with log:
                        running[index] = subprocess.Popen(cell_command(out, cell, states[index]), stdout=log,
                                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                          preexec_fn=_end_with_parent)
                for index, process in list(running.items()):
                    if process.poll() is not None:
                        del running[index]
                        _check_cell_exit(out, study.cells[index], process.returncode)
                        bar.update(1)
                time.sleep(0.2)
    finally:
        _stop(running.values())


def _end_with_parent() -> None:
    """In a cell's process, before it starts: be sent SIGTERM when the wrapper dies, even by SIGKILL
    (Linux; elsewhere a killed wrapper's cells run to their end)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _check_cell_exit(out: Path, cell: Cell, status: int) -> None:
    """0 and 3 (a finished run whose status is not ok) leave metrics; anything else is named."""
    if status not in (0, FAILED_RUN) or not (out / cell.folder / "metrics.json").is_file():
        ended = f"was killed by {signal.Signals(-status).name}" if status < 0 and -status in signal.valid_signals() \
            else f"exited with status {status}"
        print(f"warning: cell {cell.folder} {ended}; see "
              f"{out / 'logs' / (cell_file(out, cell).stem + '.log')}", file=sys.stderr)


def _stop(processes) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _progress(total: int, done: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="cells", unit="cell", disable=None, file=sys.stderr)


def cell_row(out: Path, cell: Cell, cfg: TorchRunnerConfig) -> dict[str, Any]:
    """The cell's table row; ``missing`` when its folder holds another run's results (a runner started
    there with other settings, by hand or as another cell's command)."""
    mismatch = record_mismatch(cfg)
    if mismatch is not None and (out / cell.folder / "metrics.json").exists():
        return missing_row(cell_name_of(cell), cell.seed, dict(cell.assignments), mismatch)
    return run_row(out / cell.folder, cell_name_of(cell), cell.seed, dict(cell.assignments))


def write_study_results(out: Path, study: Study, one_dataset: bool, with_baseline: bool = False) -> list[dict[str, Any]]:
    """Tables from every cell's folder (and baseline/ ``with_baseline``); sweep.png when a setting
    other than the architecture varies or there are several seeds; comparison.png (first seed of
    each cell, up to 8, and the flat iterative start) for one dataset."""
    import numpy as np

    from ptycho_torch import plots

    rows = [cell_row(out, cell, cfg) for cell, cfg in zip(study.cells, study.configs)]
    swept = [s.name for s in study.sweeps if len(s.values) > 1]
    baseline_rows = read_baseline_rows(out) if with_baseline else []
    table = write_tables(out, [*rows, *baseline_rows], swept)
    varying = [s for s in study.sweeps if len(s.values) > 1]
    if varying and (varying[0].name != "architecture" or len(varying) > 1 or len({c.seed for c in study.cells}) > 1):
        x, others = varying[0], [s.name for s in varying[1:]]
        plots.plot_sweep(out / "sweep.png", x.flag, [value_word(v) for v in x.values],
                         sweep_series(rows, x.name, x.values, others))
    firsts = [(cell, cfg) for cell, cfg in first_seeds(study) if (cfg.output_dir / "recon.npz").is_file()]
    if one_dataset and firsts and len(firsts) <= 8:
        with np.load(firsts[0][1].output_dir / "recon.npz") as first:
            truth = first["ground_truth"][0]
        recons = {}
        for cell, cfg in firsts:
            with np.load(cfg.output_dir / "recon.npz") as saved:
                recons[cell_name_of(cell)] = saved["recon"][0]
        iterative = flat_recon(out) if baseline_rows else None
        if iterative is not None:
            recons[f"iterative, {max(r['iterations'] for r in baseline_rows)} it."] = iterative[0]
        plots.plot_comparison(out / "comparison.png", truth, recons)
    return table


def first_seeds(study: Study) -> list[tuple[Cell, TorchRunnerConfig]]:
    """Each cell's run of the first seed (every run without --seeds), with its config."""
    return [(cell, cfg) for cell, cfg in zip(study.cells, study.configs) if cell.seed in (None, study.cells[0].seed)]


def cell_name_of(cell: Cell) -> str:
    return cell.folder.parts[1]


def main(argv: Sequence[str] | None = None) -> int:
    study, ns = parse_study(argv)
    warn_ignored(ignored_by_every_row(study.configs, ns.given), wrapper_flags(), study.configs[0])
    if ns.dry_run:
        print(json.dumps([resolved_json(cfg) for cfg in study.configs], indent=2))
        return 0
    mode = "emit" if ns.emit_commands else "summarize" if ns.summarize else "run"
    baseline = (ns.baseline, ns.baseline_init) if ns.baseline is not None else None
    return run_command(lambda: report(run_study(study, ns.output_dir, ns.overwrite, ns.given, ns.jobs, mode, baseline),
                                      ns.output_dir), wrapper_flags())


def report(table: list[dict[str, Any]] | None, output_dir: Path) -> int:
    if table is None:  # commands written
        return 0
    runs = [row for row in table if row["row"] == "run"]
    shown = [row for row in table if row["row"] in ("run", "baseline")]
    print(markdown(shown, [c for c in shown_columns(shown) if c not in ("row", "seed")
                           or any(r.get("seed") is not None for r in runs)]), end="")
    print(f"comparison in {output_dir}")
    baselines = [row for row in table if row["row"] == "baseline"]
    return outcome_status({**{f"run {row['cell']}" + (f" seed {row['seed']}" if row["seed"] is not None else ""): row
                              for row in runs}, **{f"baseline row {row['cell']}": row for row in baselines}})


if __name__ == "__main__":
    exit_with(main)
