"""Mutation check of the config contract: every setting read in ``ptycho_torch/`` is guarded by a test.

For each read of a config field in the package (``cfg.epochs``, ``plan.training.model.N``, ...),
a mutant replaces that one read by the field's default value, and the test suite runs on the
mutant in a temporary copy of the repository. A mutant the suite passes ("survived") is a
setting whose reading no test notices: a dead flag that would go unseen. The exit status is 0
when every mutant is killed (and none broke), 1 otherwise.

    python tests/mutation/check_setting_reads.py --list               # the reads found; runs nothing
    python tests/mutation/check_setting_reads.py                      # the whole campaign (slow)
    python tests/mutation/check_setting_reads.py --only model.py:88 nonfinite --jobs 2 --timeout 600

What counts as a read (found with ``ast``): an ``Attribute`` in Load context whose ``attr`` is a
field of a config class and whose base expression is a config object. Config objects are known
by the names they are bound to (``CONFIG_NAMES``) and by following nested config fields from
them (``plan.training.model`` is a ModelConfig). An attribute named like a setting on any other
base is printed as a warning, unless ``NOT_CONFIGS`` says what it is, so that a new alias is
noticed rather than skipped. ``ptycho_torch/config.py`` (validation code) is not mutated.

Each mutant first runs the most likely killers (``FAST_KILLERS``), then the rest of ``tests/``;
pytest exit code 0 on both = survived, 1 = killed, anything else = a broken mutant (its output
tail is shown). A kill is confirmed by running the killing test again on the restored copy: when
it fails there too (a file the copy lacks, a flaky test), the mutant is broken, not killed.
Settings whose effect needs hardware this machine lacks (``machine_bound`` in their runner route)
are run and listed under their own heading; their survivors do not fail the check. This
script's name does not match ``test_*.py``, so pytest never collects it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: make the package importable without installing it

from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, SimulationConfig, TrainingConfig  # noqa: E402
from ptycho_torch.inference import ReconstructionPlan  # noqa: E402
from ptycho_torch.workflow import RunPlan  # noqa: E402
from scripts.grid_lines_reconstruct import ReconstructConfig  # noqa: E402
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig  # noqa: E402
from scripts.studies.runner_fields import route_of  # noqa: E402

PACKAGE = "ptycho_torch"
UNMUTATED_MODULES = ("config.py",)  # validation code: checking a value is not a use of the setting
SETTING_CLASSES = (ModelConfig, TrainingConfig, PyTorchExecutionConfig, SimulationConfig)
CONFIG_CLASSES = (*SETTING_CLASSES, RunPlan, ReconstructionPlan)
# Plan fields that are command-only settings, with the command config whose defaults they take.
COMMAND_ONLY = {RunPlan: (TorchRunnerConfig, ("train_npz", "test_npz", "output_dir", "overwrite")),
                ReconstructionPlan: (ReconstructConfig, ("checkpoint", "test_npz", "output_dir", "overwrite"))}

# Names that config objects are bound to in ptycho_torch/, per module ("*": every module).
# Only the roots: chains are followed through nested config fields (TrainingConfig.model,
# RunPlan.training/.execution/.simulation), so ``plan.training.model.N`` is ModelConfig.N.
# ``cfg`` is a ModelConfig in generators.py and a TrainingConfig elsewhere, hence per module.
CONFIG_NAMES: dict[str, dict[str, type]] = {
    "*": {
        "training": TrainingConfig,  # trainer.py, training.py, datamodule.py; workflow.py: training = module.cfg
        "execution": PyTorchExecutionConfig,  # trainer.py, workflow.py
        "self.cfg": TrainingConfig,  # PtychoPINN
        "module.cfg": TrainingConfig,  # a PtychoPINN's config, outside the module
    },
    # Not "*": on an nn.Module (PtychoPINN) self.training is torch's train/eval flag.
    "datamodule.py": {"self.training": TrainingConfig, "self.execution": PyTorchExecutionConfig},
    "generators.py": {"cfg": ModelConfig},  # build_generator(cfg) and every Generator.__init__
    "model.py": {"cfg": TrainingConfig, "model": ModelConfig},  # PtychoPINN: cfg = self.cfg, model = cfg.model
    "optimization.py": {"cfg": TrainingConfig},  # build_optimizer / build_scheduler
    "preflight.py": {"sim": SimulationConfig, "model": ModelConfig},  # check_simulation; unlit_share / warn_of_unlit_region
    "simulation.py": {"sim": SimulationConfig},  # simulate_split / split_plan / simulate_splits
    "workflow.py": {"plan": RunPlan},  # load_or_simulate / run
    "inference.py": {"plan": ReconstructionPlan},  # prepare / run
}

# Attributes named like a setting that are not config reads: (module, attribute text) -> what it is.
NOT_CONFIGS: dict[tuple[str, str], str] = {
    ("generators.py", "self.N"): "Generator.N, the generator's copy of ModelConfig.N (read from cfg.N in __init__)",
    ("model.py", "self.trainer.strategy"): "Lightning's Trainer.strategy object",
    ("model.py", "self.trainer.precision"): "Lightning's Trainer.precision, the precision it runs (recorded in checkpoints)",
    ("trainer.py", "trainer.strategy"): "Lightning's Trainer.strategy object (StopOnSignal)",
    ("reconstruction.py", "data.N"): "GridLinesData.N, the patch side of the arrays",
    ("training.py", "data.N"): "GridLinesData.N, the patch side of the arrays (gridsize 2 inference)",
    ("npz_data.py", "data.N"): "GridLinesData.N, the patch side of the arrays (a file to reconstruct)",
    ("baseline.py", "data.N"): "GridLinesData.N, the patch side of the arrays (the iterative reference)",
    ("workflow.py", "resumed.checkpoint"): "resume.ResumePoint.checkpoint, the file a resumed run continues from",
    ("datamodule.py", "self.seed"): "EpochShuffle.seed, the sampler's copy of TrainingConfig.seed",
    ("resume.py", "saved.training"): "the training config a checkpoint recorded, compared with the run's",
    ("resume.py", "saved.training.epochs"): "the epochs of the config a checkpoint recorded (its own, not the run's)",
}

FAST_KILLERS = ("tests/scripts/test_behaviour.py", "tests/scripts/test_reads.py", "tests/ptycho_torch/test_preflight.py",
                "tests/scripts/test_reconstruct.py", "tests/scripts/test_resume.py",
                "tests/ptycho_torch/test_thread_adapter.py")
# Stage 1: the likely killers; stage 2: the rest of tests/. Passing both = passing the whole suite.
STAGES = (list(FAST_KILLERS), ["tests", *(f"--ignore={path}" for path in FAST_KILLERS)])
TAIL_LINES = 15


# --- the config tables, derived from the classes ---------------------------------------------------

def nested_configs() -> dict[tuple[type, str], type]:
    """(class, field) -> the config class the field holds (TrainingConfig.model, RunPlan.training, ...)."""
    nested = {}
    for cls in CONFIG_CLASSES:
        hints = typing.get_type_hints(cls)
        nested.update({(cls, f.name): hints[f.name] for f in dataclasses.fields(cls)
                       if hints[f.name] in CONFIG_CLASSES})
    return nested


def setting_defaults() -> dict[tuple[type, str], Any]:
    """(class, field) -> default of every mutated setting (a default_factory field is only traversed)."""
    defaults = {(cls, f.name): f.default for cls in SETTING_CLASSES for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}
    for plan, (command, names) in COMMAND_ONLY.items():
        command_defaults = {f.name: f.default for f in dataclasses.fields(command)}
        defaults |= {(plan, name): command_defaults[name] for name in names}
    return defaults


def machine_bound_reasons() -> dict[str, str]:
    """Setting name -> why its effect cannot be seen on a CPU-only machine (a setting has one name everywhere)."""
    routes = {f.name: route_of(f) for f in dataclasses.fields(TorchRunnerConfig)}
    return {name: route.machine_bound for name, route in routes.items() if route and route.machine_bound}


NESTED = nested_configs()
DEFAULTS = setting_defaults()
FIELD_NAMES = {name for _, name in DEFAULTS} | {name for _, name in NESTED}
MACHINE_BOUND = machine_bound_reasons()


# --- finding the reads -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Read:
    path: str  # relative to the repository, e.g. ptycho_torch/model.py
    line: int
    col: int  # UTF-8 byte offsets, as ast gives them
    end_line: int
    end_col: int
    owner: str  # the config class
    field: str
    text: str  # the read's source text
    default: Any

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    @property
    def setting(self) -> str:
        return f"{self.owner}.{self.field}"

    @property
    def label(self) -> str:
        """What ``--only`` matches: "module:line:col Class.field"."""
        return f"{self.where} {self.setting}"


def config_class(node: ast.expr, module: str) -> type | None:
    """The config class that ``node`` evaluates to (name table, then nested fields), or None."""
    names = CONFIG_NAMES["*"] | CONFIG_NAMES.get(module, {})
    text = ast.unparse(node)
    if text in names:
        return names[text]
    if isinstance(node, ast.Attribute):
        owner = config_class(node.value, module)
        return NESTED.get((owner, node.attr)) if owner else None
    return None


def setting_attributes(tree: ast.AST) -> Iterable[ast.Attribute]:
    """Attributes in Load context named like a config field (targets of assignments are not reads)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in FIELD_NAMES:
            yield node


def scan_module(path: Path) -> tuple[list[Read], list[str]]:
    """The setting reads of one module, and a warning per setting-named attribute on an unknown base."""
    source, module, rel = path.read_text(), path.name, path.relative_to(REPO).as_posix()
    reads, warnings = [], []
    for node in setting_attributes(ast.parse(source)):
        if config_class(node, module) is not None:
            continue  # a config object itself (self.training, plan.training.model): traversed, not a setting
        owner, text = config_class(node.value, module), ast.get_source_segment(source, node)
        if owner is not None and (owner, node.attr) in DEFAULTS:
            reads.append(Read(rel, node.lineno, node.col_offset, node.end_lineno, node.end_col_offset,
                              owner.__name__, node.attr, text, DEFAULTS[(owner, node.attr)]))
        elif owner is not None and (owner, node.attr) not in NESTED:
            warnings.append(f"warning: {rel}:{node.lineno}  {text}: {owner.__name__} has no field {node.attr}")
        elif owner is None and (module, ast.unparse(node)) not in NOT_CONFIGS:
            warnings.append(f"warning: {rel}:{node.lineno}  {text}: unknown base {ast.unparse(node.value)!r} "
                            "(add it to CONFIG_NAMES or NOT_CONFIGS)")
    return reads, warnings


def package_modules() -> list[Path]:
    return [p for p in sorted((REPO / PACKAGE).glob("*.py")) if p.name not in UNMUTATED_MODULES]


def find_reads() -> tuple[list[Read], list[str]]:
    reads, warnings = [], []
    for path in package_modules():
        found, warned = scan_module(path)
        reads += sorted(found, key=lambda r: (r.line, r.col))
        warnings += warned
    return reads, warnings


# --- mutants ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutant:
    read: Read
    replacement: str
    original: str  # the module's source as scanned
    source: str  # the module's source with the read replaced

    @property
    def equivalent(self) -> bool:
        return self.replacement == self.read.text

    @property
    def machine_bound(self) -> str | None:
        return MACHINE_BOUND.get(self.read.field)


def literal(value: Any) -> str:
    """Source text for a default; a Path needs no import in the mutated module."""
    if isinstance(value, Path):
        return f"__import__('pathlib').Path({str(value)!r})"
    return repr(value)


def splice(source: str, read: Read, replacement: str) -> str:
    """``source`` with the read's text replaced (ast offsets are UTF-8 byte columns)."""
    data = source.encode()
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    begin, end = starts[read.line - 1] + read.col, starts[read.end_line - 1] + read.end_col
    return (data[:begin] + replacement.encode() + data[end:]).decode()


def make_mutant(read: Read) -> Mutant:
    original = (REPO / read.path).read_text()
    replacement = f"({literal(read.default)})"
    mutant = Mutant(read, replacement, original, splice(original, read, replacement))
    ast.parse(mutant.source, filename=read.path)  # a mutant that does not parse is a bug here, not a kill
    return mutant


# --- running a mutant in a copy of the repository ---------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    verdict: str  # killed | survived | broken | timeout | equivalent
    detail: str = ""  # the killing test, or the output tail of a broken mutant
    seconds: float = 0.0


class Copies:
    """One temporary copy of the repository per worker; a worker borrows one for each mutant."""

    def __init__(self, count: int):
        self._dir = tempfile.TemporaryDirectory(prefix="setting-mutants-")
        self._free: queue.Queue[Path] = queue.Queue()
        for index in range(count):
            self._free.put(make_copy(Path(self._dir.name) / f"worker{index}"))

    def borrow(self) -> Path:
        return self._free.get()

    def give_back(self, root: Path) -> None:
        self._free.put(root)

    def close(self) -> None:
        self._dir.cleanup()


def project_files() -> list[str]:
    """Every file git tracks or would track (not ignored), as the suite sees the checkout: a copy
    missing one (the README or the Makefile a test reads) would fail every mutant and count as kills."""
    done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return [name for name in done.stdout.split("\0") if name and (REPO / name).is_file()]


def make_copy(root: Path) -> Path:
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    check_imports_resolve(root)
    return root


def copy_env(root: Path) -> dict[str, str]:
    """PYTHONPATH puts the copy ahead of the editable install; no bytecode, so a restored file is never stale."""
    return dict(os.environ, PYTHONPATH=str(root), HYPOTHESIS_PROFILE="dev", MPLBACKEND="Agg",
                PYTHONDONTWRITEBYTECODE="1")


def check_imports_resolve(root: Path) -> None:
    """Abort unless ``import ptycho_torch`` (and ``scripts``) in the copy's environment load the copy."""
    code = "import ptycho_torch, scripts; print(ptycho_torch.__file__); print(scripts.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=copy_env(root), capture_output=True, text=True)
    files = done.stdout.split()
    if done.returncode != 0 or len(files) != 2 or not all(Path(f).resolve().is_relative_to(root.resolve())
                                                           for f in files):
        raise SystemExit(f"abort: in the copy {root}, the packages resolve to {files or done.stderr.strip()}, "
                         f"not to the copy: the mutants would test {REPO}")


def pytest_command(paths: Sequence[str]) -> list[str]:
    plugins = ["-n", "0"] if importlib.util.find_spec("xdist") else []
    plugins += ["-p", "no:randomly"] if importlib.util.find_spec("pytest_randomly") else []
    return [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *plugins, *paths]


LIVE: set[subprocess.Popen] = set()  # running pytest process groups, stopped on interrupt
LIVE_LOCK = threading.Lock()
STOPPING = threading.Event()  # set on interrupt: start no further pytest


def run_pytest(root: Path, paths: Sequence[str], seconds: float) -> tuple[int | None, str]:
    """(exit code, output); exit code None when it ran past ``seconds`` (its process group is killed)."""
    with LIVE_LOCK:
        if STOPPING.is_set():
            return -1, "interrupted"
        process = subprocess.Popen(pytest_command(paths), cwd=root, env=copy_env(root), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        LIVE.add(process)
    try:
        output, _ = process.communicate(timeout=max(seconds, 1.0))
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return None, process.communicate()[0]
    finally:
        with LIVE_LOCK:
            LIVE.discard(process)


def first_failure(output: str) -> str:
    """The node id of the first FAILED (or ERROR) line of pytest's short summary."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ", 1)[0]
    return "(no FAILED line; output tail)\n" + tail(output)


def tail(output: str) -> str:
    return "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])


def run_stages(root: Path, timeout: float) -> tuple[str, str]:
    """(verdict, detail) of the suite on the copy as it stands."""
    deadline = time.monotonic() + timeout
    for paths in STAGES:
        code, output = run_pytest(root, paths, deadline - time.monotonic())
        if code is None:
            return "timeout", f"after {timeout:.0f} s in {' '.join(paths[:2])}"
        if code == 1:
            return "killed", first_failure(output)
        if code != 0:
            return "broken", f"pytest exit code {code}\n{tail(output)}"
    return "survived", ""


PASSES_UNMUTATED: dict[str, bool] = {}  # killing test -> whether it passes on an unmutated copy
PASSES_LOCK = threading.Lock()


def passes_unmutated(root: Path, test_id: str, timeout: float) -> bool:
    """Whether ``test_id`` passes on ``root`` as copied (asked once per test): a test that fails
    without any mutant would count every mutant it meets as killed."""
    with PASSES_LOCK:
        known = PASSES_UNMUTATED.get(test_id)
    if known is None:
        code, _ = run_pytest(root, [test_id], timeout)
        known = code == 0
        with PASSES_LOCK:
            PASSES_UNMUTATED[test_id] = known
    return known


def run_mutant(mutant: Mutant, copies: Copies, timeout: float) -> Outcome:
    """Write the mutant into a borrowed copy, run the suite, restore the module; a kill counts
    only when the killing test passes once the module is restored."""
    started, root = time.monotonic(), copies.borrow()
    target = root / mutant.read.path
    try:
        if target.read_text() != mutant.original:
            return Outcome(mutant, "broken", f"{mutant.read.path} changed between the scan and the copy; rerun")
        target.write_text(mutant.source)
        verdict, detail = run_stages(root, timeout)
        target.write_text(mutant.original)
        if verdict == "killed" and not passes_unmutated(root, detail, timeout):
            verdict, detail = "broken", f"not a kill: {detail} fails without the mutant too"
        return Outcome(mutant, verdict, detail, time.monotonic() - started)
    finally:
        target.write_text(mutant.original)
        copies.give_back(root)


def stop_live_runs() -> None:
    with LIVE_LOCK:
        STOPPING.set()
        for process in LIVE:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


# --- reporting -------------------------------------------------------------------------------------

def describe(mutant: Mutant) -> str:
    read = mutant.read
    return f"{read.where}  {read.setting}  {read.text} -> {mutant.replacement}"


def outcome_line(outcome: Outcome) -> str:
    read = outcome.mutant.read
    line = f"{outcome.verdict:<10}{read.where}  {read.setting}"
    if outcome.verdict == "killed":
        line += f"  by {outcome.detail}"
    elif outcome.verdict == "survived":
        line += f"  ({read.text} -> {outcome.mutant.replacement})"
    elif outcome.detail:
        line += "  " + outcome.detail.replace("\n", "\n    ")
    return line + (f"  [{outcome.seconds:.0f} s]" if outcome.seconds else "")


def print_section(title: str, outcomes: list[Outcome], with_reason: bool = False) -> None:
    if not outcomes:
        return
    print(f"  {title}:")
    for o in outcomes:
        reason = f"  ({o.mutant.machine_bound})" if with_reason else ""
        print(f"    {o.verdict:<10}{describe(o.mutant)}{reason}")


def print_summary(outcomes: list[Outcome], seconds: float) -> None:
    main = [o for o in outcomes if not o.mutant.machine_bound]
    bound = [o for o in outcomes if o.mutant.machine_bound]
    count = {v: sum(o.verdict == v for o in main) for v in ("killed", "survived", "broken", "timeout", "equivalent")}
    print(f"\nsummary: {len(outcomes)} mutants ({len(bound)} machine-bound, listed apart) in {seconds:.0f} s wall time")
    print(f"  {len(main)} others: killed {count['killed']}, survived {count['survived']}, broken {count['broken']}, "
          f"killed by timeout {count['timeout']}, equivalent (skipped) {count['equivalent']}")
    for verdict in ("survived", "broken", "timeout", "equivalent"):
        print_section(verdict, [o for o in main if o.verdict == verdict])
    print_section("machine-bound (run; a survivor here does not fail the check)", bound, with_reason=True)


def failed(outcomes: list[Outcome]) -> bool:
    """A survivor that is not machine-bound, or any broken mutant, fails the check."""
    return any(o.verdict == "broken" or (o.verdict == "survived" and not o.mutant.machine_bound) for o in outcomes)


def list_reads(mutants: list[Mutant], warnings: list[str]) -> None:
    for mutant in mutants:
        flags = "  [machine-bound]" * bool(mutant.machine_bound) + "  [equivalent]" * mutant.equivalent
        print(describe(mutant) + flags)
    modules = len({m.read.path for m in mutants})
    bound = sum(bool(m.machine_bound) for m in mutants)
    print(f"{len(mutants)} reads in {modules} modules ({bound} machine-bound); {len(warnings)} unknown-base warnings")


# --- entry point -----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the reads found and exit without running")
    parser.add_argument("--only", nargs="+", metavar="SUBSTR",
                        help='run only mutants whose "module:line:col Class.field" label contains one of these')
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="mutants run at once, each in its own repository copy (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant, both stages together")
    return parser.parse_args(argv)


def selected(mutants: list[Mutant], only: list[str] | None) -> list[Mutant]:
    return [m for m in mutants if not only or any(s in m.read.label for s in only)]


def run_all(mutants: list[Mutant], jobs: int, timeout: float) -> list[Outcome]:
    """Run the mutants ``jobs`` at a time, printing each outcome as it finishes."""
    outcomes = [Outcome(m, "equivalent") for m in mutants if m.equivalent]
    runnable = [m for m in mutants if not m.equivalent]
    if not runnable:
        return outcomes
    workers = min(jobs, len(runnable))
    STOPPING.clear()
    copies = Copies(workers)
    pool = ThreadPoolExecutor(max_workers=workers)  # each thread drives one pytest process at a time
    try:
        futures = [pool.submit(run_mutant, m, copies, timeout) for m in runnable]
        for future in as_completed(futures):
            outcomes.append(future.result())
            print(outcome_line(outcomes[-1]), flush=True)
    finally:  # on an interrupt: cancel what has not started, stop what runs, then remove the copies
        pool.shutdown(wait=False, cancel_futures=True)
        stop_live_runs()
        pool.shutdown(wait=True)
        copies.close()
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reads, warnings = find_reads()
    for warning in warnings:
        print(warning, file=sys.stderr)
    mutants = selected([make_mutant(r) for r in reads], args.only)
    if args.list:
        list_reads(mutants, warnings)
        return 0
    started = time.monotonic()
    print(f"{len(mutants)} mutants, {args.jobs} at a time, {args.timeout:.0f} s each at most", flush=True)
    outcomes = run_all(mutants, max(1, args.jobs), args.timeout)
    print_summary(outcomes, time.monotonic() - started)
    return 1 if failed(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
