"""Compare generator architectures on one grid-lines dataset.

    python -m scripts.studies.grid_lines_compare_wrapper --architectures cnn,fno,hybrid \\
        --output-dir runs/compare --torch-grad-clip 1.0

Simulates (or loads) the data once, runs each architecture through the runner's API into
``<output_dir>/runs/<architecture>/``, then writes ``metrics_table.csv``, ``metrics_table.md``
and ``comparison.png``. Flags come from the runner's field declarations: dataset settings keep
their runner flag (``--object-size``), training/model/execution settings get ``--torch-<flag>``
(``--torch-grad-clip`` -> gradient_clip_val). No torch at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptycho_torch.config import ARCHITECTURES, ConfigError
from scripts.studies.grid_lines_torch_runner import (
    TorchRunnerConfig, ignored_given, plan_of, resolved_json, warn_ignored,
)
from scripts.studies.runner_cli import (
    add_config_argument, add_setting_arguments, config_error_message, new_parser, nonempty_path, outcome_status,
    run_command, settings_given,
)
from scripts.studies.runner_fields import flag_of, route_of

TORCH_PREFIX = "--torch-"
WRAPPER_OWNED = ("architecture", "output_dir", "overwrite")  # set per row or by the wrapper's own flags
TABLE_COLUMNS = ("architecture", "status", "amplitude_ssim", "amplitude_psnr", "amplitude_mae", "amplitude_frc50",
                 "phase_ssim", "phase_psnr", "phase_mae", "phase_frc50", "optimizer_steps", "final_train_loss")


def _fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TorchRunnerConfig) if f.name not in WRAPPER_OWNED]


def is_torch_setting(f: dataclasses.Field) -> bool:
    """Settings that reach the model, training or execution configs get a --torch- flag."""
    return bool(set(route_of(f).to) & {"model", "training", "execution"})


def wrapper_flags() -> dict[str, str]:
    return {f.name: flag_of(f, TORCH_PREFIX if is_torch_setting(f) else "--") for f in _fields()}


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "python -m scripts.studies.grid_lines_compare_wrapper",
        "Train several generator architectures on one grid-lines dataset and compare them.",
        usage="%(prog)s --architectures cnn,fno,hybrid --output-dir PATH [--torch-grad-clip FLOAT] [...]")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES),
                        help=f"comma-separated subset of {','.join(ARCHITECTURES)} (default: all)")
    parser.add_argument("--output-dir", type=nonempty_path, default=Path("runs/grid_lines_compare"),
                        help="folder for data/, runs/<architecture>/ and the comparison tables")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="allow writing into a non-empty output folder")
    parser.add_argument("--dry-run", action="store_true", help="print each row's resolved configs as JSON and exit")
    add_config_argument(parser)  # its architecture, output_dir and overwrite are the wrapper's own: ignored
    data = parser.add_argument_group("dataset settings")
    add_setting_arguments(data, TorchRunnerConfig, [f for f in _fields() if not is_torch_setting(f)])
    torch_group = parser.add_argument_group("runner settings for every architecture (--torch-<runner flag>)")
    add_setting_arguments(torch_group, TorchRunnerConfig, [f for f in _fields() if is_torch_setting(f)],
                          flag_prefix=TORCH_PREFIX)
    return parser


def parse_rows(argv: Sequence[str] | None) -> tuple[list[TorchRunnerConfig], argparse.Namespace]:
    """One validated runner config per architecture; bad input exits 2 naming the flag."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    architectures = [a.strip() for a in ns.architectures.split(",") if a.strip()]
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown or not architectures or len(set(architectures)) != len(architectures):
        parser.error(f"--architectures={ns.architectures!r}: must be distinct names from {','.join(ARCHITECTURES)}")
    given = settings_given(parser, ns, TorchRunnerConfig, command_only=("architectures", "dry_run", *WRAPPER_OWNED),
                           ignored=WRAPPER_OWNED)
    rows = []
    try:
        for arch in architectures:
            rows.append(TorchRunnerConfig(**given, architecture=arch, overwrite=ns.overwrite,
                                          output_dir=ns.output_dir / "runs" / arch))
            resolved_json(rows[-1])
    except ConfigError as err:
        parser.error(config_error_message(err, wrapper_flags()))
    return rows, ns


def table_row(metrics: dict[str, Any]) -> dict[str, Any]:
    mean = metrics["mean"]
    row = {"architecture": metrics["architecture"], "status": metrics["status"],
           "status_reason": metrics["status_reason"], "optimizer_steps": metrics["optimizer_steps"],
           "final_train_loss": metrics["final_train_loss"]}
    for channel in ("amplitude", "phase"):
        for name in ("ssim", "psnr", "mae", "frc50"):
            row[f"{channel}_{name}"] = mean[channel][name]
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "null" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ignored_by_every_row(rows: list[TorchRunnerConfig], given: Sequence[str]) -> dict[str, str]:
    """Given settings that no architecture of the comparison can use (fno sizes for cnn rows alone)."""
    per_row = [ignored_given(cfg, given) for cfg in rows]
    return {name: why for name, why in per_row[0].items() if all(name in ignored for ignored in per_row)}


def run_comparison(rows: list[TorchRunnerConfig], output_dir: Path, overwrite: bool,
                   given: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Check every row, claim ``output_dir``, share one dataset, run each row, write the tables.
    Each row's config.json records the ``given`` settings that cannot act in that row."""
    import numpy as np

    from ptycho_torch import artifacts, plots, workflow
    from ptycho_torch.output_folder import check_inputs_survive, check_output_dir, claimed, comparison_layout

    plans = [plan_of(cfg, given) for cfg in rows]
    data = None
    check_output_dir(output_dir, overwrite)
    for plan in plans:  # each row's folder too: a file where runs/<architecture> goes is refused now
        data = workflow.prepare(plan, data)
    layout = comparison_layout(ARCHITECTURES)
    check_inputs_survive(output_dir, overwrite, layout, workflow.input_files(plans[0]))
    with claimed(output_dir, overwrite, layout) as out:
        if data is None:
            data = workflow.load_or_simulate(plans[0], out / "data")
        table, recons = [], {}
        for cfg, plan in zip(rows, plans):
            table.append(table_row(workflow.run(plan, data=data)))
            recons[cfg.architecture] = np.load(cfg.output_dir / "recon.npz")["recon"][0]
        artifacts.write_csv(out / "metrics_table.csv", table, TABLE_COLUMNS)
        with artifacts.atomic_file(out / "metrics_table.md", "w") as handle:
            handle.write(markdown_table(table))
        plots.plot_comparison(out / "comparison.png", data[1].YY_ground_truth[0], recons)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    rows, ns = parse_rows(argv)
    warn_ignored(ignored_by_every_row(rows, ns.given), wrapper_flags(), rows[0])
    if ns.dry_run:
        print(json.dumps([resolved_json(cfg) for cfg in rows], indent=2))
        return 0
    return run_command(lambda: report(run_comparison(rows, ns.output_dir, ns.overwrite, ns.given), ns.output_dir),
                       wrapper_flags())


def report(table: list[dict[str, Any]], output_dir: Path) -> int:
    print(markdown_table(table), end="")
    print(f"comparison in {output_dir}")
    return outcome_status({f"architecture {row['architecture']}": row for row in table})


if __name__ == "__main__":
    sys.exit(main())
