"""Simulate a grid-lines dataset on its own: ``train.npz`` and ``test.npz`` in the NPZ contract.

    python -m scripts.grid_lines_datagen --output-dir data/grid_lines --N 64 --object-size 392

The flags are the runner's dataset flags (every setting routed to the simulation config), so a
dataset made here and one simulated by the runner from the same flags are identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from ptycho_torch.config import ConfigError, SimulationConfig
from scripts.studies.grid_lines_torch_runner import (
    TorchRunnerConfig, add_setting_arguments, config_error_message, runner_flags,
)
from scripts.studies.runner_fields import route_of


def simulation_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TorchRunnerConfig) if "simulation" in route_of(f).to]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.grid_lines_datagen", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for train.npz and test.npz")
    parser.add_argument("--overwrite", action="store_true", help="replace existing train.npz / test.npz")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_setting_arguments(parser, simulation_fields())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    settings = {f.name: getattr(ns, f.name) for f in simulation_fields() if hasattr(ns, f.name)}
    try:
        sim = SimulationConfig(**{**dataclasses.asdict(SimulationConfig()), **settings})
    except ConfigError as err:
        parser.error(config_error_message(err, runner_flags()))
    existing = [p.name for p in (ns.output_dir / "train.npz", ns.output_dir / "test.npz") if p.exists()]
    if existing and not ns.overwrite:
        parser.error(f"--output-dir={str(ns.output_dir)!r}: already holds {', '.join(existing)}; pass --overwrite")
    from ptycho_torch.npz_data import DataError
    from ptycho_torch.simulation import simulate_dataset

    try:
        train_path, test_path = simulate_dataset(sim, ns.output_dir, progress=not ns.no_progress)
    except DataError as err:  # a bad --probe-npz
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {train_path} and {test_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
