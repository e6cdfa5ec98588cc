"""Apply a trained model (a run's checkpoint) to a data file and score it when it holds ground truth.

Writes recon.npz, reconstruction.png, config.json, and metrics.json for a file with ground truth:

    python -m scripts.grid_lines_reconstruct --checkpoint runs/x/checkpoints/last.ckpt \\
        --test-npz data/test.npz --output-dir runs/x_on_test

The checkpoint rebuilds the model by itself (its training config and probe travel with it); the
file may be either split of the NPZ contract, with the model's N. Settings are declared like the
runner's (``runner_fields.setting``): each says where it goes, and the contract tests check it
arrives and acts. No torch at import time: ``--help`` and ``--dry-run`` stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptycho_torch.config import ACCELERATORS, PRECISIONS, ConfigError, Problem, PyTorchExecutionConfig, Validated, to_jsonable
from scripts.studies.runner_cli import (
    add_grouped_settings, build_config, exit_with, new_parser, outcome_status, run_command, setting_flags,
)
from scripts.studies.runner_fields import route_of, setting

E = ("execution",)
REQUIRED = ("checkpoint", "test_npz")


@dataclass(frozen=True, kw_only=True)
class ReconstructConfig(Validated):
    checkpoint: Path | None = setting(None, to=(), why="the command loads the trained model from it",
                                      help="checkpoint written by a run (e.g. <run>/checkpoints/last.ckpt); required")
    test_npz: Path | None = setting(None, to=(), why="the command reads the data to reconstruct",
                                    help="NPZ file in the data contract (either split, the model's N); scored when "
                                         "it holds YY_ground_truth; required")
    output_dir: Path = setting(Path("runs/grid_lines_reconstruct"), to=(), why="the command writes the artifacts",
                               help="folder for config.json, recon.npz, reconstruction.png and metrics.json")
    overwrite: bool = setting(False, to=(), why="guards the command's own output folder",
                              help="allow writing into a non-empty output folder")
    accelerator: str = setting("cpu", to=E, choices=ACCELERATORS, help="device to predict on",
                               machine_bound="needs a GPU: on a CPU-only machine every choice resolves to the CPU")
    infer_batch_size: int = setting(256, to=E, help="patterns (gridsize 1) or groups (gridsize 2) per forward pass")
    num_threads: int = setting(0, to=E, help="torch threads; 0 = the cores other work leaves free")
    precision: str = setting("32-true", to=E, choices=PRECISIONS,
                             help="numeric precision of the forward passes; bf16-mixed runs them under bf16 autocast "
                                  "(about 2x faster on CPUs with bf16 matrix units)")


def setup_execution_config(cfg: ReconstructConfig) -> PyTorchExecutionConfig:
    """The execution config prediction reads: the command's execution settings, the rest default."""
    return PyTorchExecutionConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                                     if "execution" in route_of(f).to})


def resolve(cfg: ReconstructConfig) -> dict[str, Any]:
    """Every destination's config (the contract tests' view); refuses a missing required path."""
    missing = [Problem(name, None, "must be given") for name in REQUIRED if getattr(cfg, name) is None]
    if missing:
        raise ConfigError("ReconstructConfig", missing)
    return {"execution": setup_execution_config(cfg)}


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m scripts.grid_lines_reconstruct", __doc__.splitlines()[0],
                        usage="%(prog)s --checkpoint CKPT --test-npz NPZ [--output-dir DIR] [other settings]")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and exit")
    add_grouped_settings(parser, ReconstructConfig, dataclasses.fields(ReconstructConfig))
    return parser


def reconstruct_flags() -> dict[str, str]:
    return setting_flags(ReconstructConfig)


def parse_config(argv: Sequence[str] | None = None) -> tuple[ReconstructConfig, argparse.Namespace]:
    """Parse argv into a validated config; bad input exits 2 with the flag named."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    given = {k: v for k, v in vars(namespace).items() if k != "dry_run"}
    return build_config(parser, ReconstructConfig, given, check=resolve), namespace


def plan_of(cfg: ReconstructConfig):
    from ptycho_torch.inference import ReconstructionPlan

    return ReconstructionPlan(checkpoint=cfg.checkpoint, test_npz=cfg.test_npz, execution=setup_execution_config(cfg),
                              output_dir=cfg.output_dir, overwrite=cfg.overwrite,
                              record={"reconstruct": to_jsonable(cfg)})


def main(argv: Sequence[str] | None = None) -> int:
    cfg, namespace = parse_config(argv)
    if namespace.dry_run:
        print(json.dumps({"reconstruct": to_jsonable(cfg), "execution": to_jsonable(setup_execution_config(cfg))},
                         indent=2))
        return 0
    return run_command(lambda: report(cfg, _run(cfg)), reconstruct_flags())


def _run(cfg: ReconstructConfig) -> dict[str, Any]:
    from ptycho_torch import inference

    return inference.run(plan_of(cfg))


def report(cfg: ReconstructConfig, summary: dict[str, Any]) -> int:
    scored = ""
    if "mean" in summary:
        ssim = summary["mean"]["amplitude"]["ssim"]
        scored = f", amplitude SSIM {'null' if ssim is None else format(ssim, '.3f')}"
    print(f"reconstructed {summary['objects']} object(s) into {cfg.output_dir}{scored}")
    return outcome_status({f"reconstruction in {cfg.output_dir}": summary})


if __name__ == "__main__":
    exit_with(main)
