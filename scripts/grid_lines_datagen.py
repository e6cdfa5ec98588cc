"""Simulate a grid-lines dataset on its own: ``train.npz`` and ``test.npz`` in the NPZ contract.

    python -m scripts.grid_lines_datagen --output-dir data/grid_lines --N 64 --object-size 392

The flags are the runner's dataset flags (every setting routed to the simulation config), so a
dataset made here and one simulated by the runner from the same flags are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ptycho_torch.config import (
    PyTorchExecutionConfig, RunSettings, SimulationConfig, TrainingConfig, inert_settings,
)
from scripts.studies.grid_lines_torch_runner import TorchRunnerConfig, runner_flags, warn_ignored
from scripts.studies.runner_cli import (
    add_setting_arguments, build_config, exit_with, new_parser, nonempty_path, run_command,
)
from scripts.studies.runner_fields import route_of


def simulation_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TorchRunnerConfig) if "simulation" in route_of(f).to]


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m scripts.grid_lines_datagen", __doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=nonempty_path, required=True, help="folder for train.npz and test.npz")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder: an earlier train.npz / test.npz is removed first, "
                             "other files are kept")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_setting_arguments(parser.add_argument_group("simulated data"), TorchRunnerConfig, simulation_fields())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    settings = {f.name: getattr(ns, f.name) for f in simulation_fields() if hasattr(ns, f.name)}
    sim = build_config(parser, SimulationConfig, settings, flags=runner_flags())
    warn_of_inert(sim, settings)
    return run_command(lambda: simulate(sim, ns.output_dir, ns.overwrite, progress=not ns.no_progress),
                       runner_flags())


def warn_of_inert(sim: SimulationConfig, given: dict) -> None:
    """One line per given setting the simulation cannot use (``--probe-defocus`` beside a probe file), as
    the runner warns; the file's metadata still records it, as a setting of the simulation."""
    inert = inert_settings(RunSettings(TrainingConfig(), PyTorchExecutionConfig(), sim))
    warn_ignored({name: inert[f"simulation.{name}"] for name in given if f"simulation.{name}" in inert},
                 runner_flags(), sim)


def simulate(sim: SimulationConfig, output_dir: Path, overwrite: bool, progress: bool) -> int:
    """Check the probe file and the folder, claim it, then simulate and write both splits."""
    from ptycho_torch.output_folder import (
        DATASET_LAYOUT, check_inputs_survive, check_no_other_output, check_output_dir, claimed,
    )
    from ptycho_torch.preflight import check_probe_file, check_simulation_memory
    from ptycho_torch.simulation import simulate_dataset

    check_probe_file(sim)
    check_simulation_memory(sim)
    check_output_dir(output_dir, overwrite)
    check_no_other_output(output_dir, overwrite, DATASET_LAYOUT)
    check_inputs_survive(output_dir, overwrite, DATASET_LAYOUT, {"probe_npz": sim.probe_npz})
    with claimed(output_dir, overwrite, DATASET_LAYOUT):
        train_path, test_path = simulate_dataset(sim, output_dir, progress=progress)
    print(f"wrote {train_path} and {test_path}")
    return 0


if __name__ == "__main__":
    exit_with(main)
