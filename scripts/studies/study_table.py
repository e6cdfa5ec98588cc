"""The comparison / sweep table: one row per run, then per cell the mean and spread over its seeds.

Read back from the run folders (metrics.json, history.csv, timing.json), so a table can be built
from runs made anywhere (``--summarize`` after a job array). ``clip_bite_fraction``: of the steps
whose gradient norms were recorded and not skipped, the share where clipping lowered the norm.
``seconds``: training plus the scored reconstruction; ``train_seconds``: training alone;
``seconds_per_scan``: what a new scan costs once trained (a warm prediction and stitching of the
test split, per test object). Iterative baseline rows (``row`` = baseline, ``scripts.studies.
baselines``) fill the same scores, ``seconds`` and ``seconds_per_scan`` with the engine's time, and
the BASELINE_COLUMNS.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.studies.sweep import UNREADABLE

SCORES = ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr", "amplitude_frc50", "phase_frc50",
          "amplitude_mae", "phase_mae", "phase_seam_ratio", "seconds", "train_seconds", "seconds_per_scan",
          "clip_bite_fraction")
BASELINE_COLUMNS = ("iterations", "init", "target_phase_ssim", "target_iterations", "target_seconds_per_scan")
RUN_COLUMNS = ("row", "cell", "seed", "architecture", "status", *SCORES, *BASELINE_COLUMNS, "collapsed",
               "optimizer_steps", "final_train_loss")
MISSING = "missing"  # a cell whose run has no metrics.json (not run yet, or stopped)


def clip_bite_fraction(history_csv: Path) -> float | None:
    """Share of recorded, applied steps where the post-clip norm is below the pre-clip norm."""
    with open(history_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["grad_norm_preclip"] and r["grad_norm_postclip"] and r["skipped"] != "True"]
    if not rows:
        return None
    return sum(float(r["grad_norm_postclip"]) < float(r["grad_norm_preclip"]) for r in rows) / len(rows)


def score_columns(mean: dict[str, Any]) -> dict[str, Any]:
    """score_objects' mean scores as table columns: amplitude_ssim, ..., phase_frc50."""
    return {f"{channel}_{name}": mean[channel][name] for channel in ("amplitude", "phase")
            for name in ("ssim", "psnr", "mae", "frc50")}


def run_row(folder: Path, cell: str, seed: int | None, swept: dict[str, Any]) -> dict[str, Any]:
    """The table row of one run folder (status ``missing`` when it holds no metrics.json);
    ``swept``: the cell's swept settings and values, shown in their own columns."""
    try:
        return _filled({"row": "run", "cell": cell, "seed": seed, **swept}, folder)
    except FileNotFoundError as err:
        return missing_row(cell, seed, swept, f"no {Path(err.filename).name}: the run did not finish")
    except UNREADABLE as err:  # a damaged record: no result
        return missing_row(cell, seed, swept, f"its records cannot be read ({type(err).__name__}: {err})")


def missing_row(cell: str, seed: int | None, swept: dict[str, Any], reason: str) -> dict[str, Any]:
    """The table row of a run that is not there (``run_row``'s, without reading the folder)."""
    return {"row": "run", "cell": cell, "seed": seed, **swept, "status": MISSING, "status_reason": reason}


def _filled(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``row`` (a copy) with the run's results."""
    row = dict(row)
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    row |= {"architecture": metrics["architecture"], "status": metrics["status"],
            "status_reason": metrics["status_reason"], "collapsed": metrics.get("collapsed"),
            "optimizer_steps": metrics["optimizer_steps"], "final_train_loss": metrics["final_train_loss"],
            "phase_seam_ratio": metrics.get("phase_seam_ratio"), "seed": config["training"]["seed"]}
    scores = score_columns(metrics["mean"])
    odd = [name for name, value in scores.items()
           if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value))]
    if odd:  # a run writes null for an undefined score, never NaN or text: the record was altered
        raise ValueError(f"scores that are neither numbers nor null: {', '.join(odd)}")
    row |= scores
    timing_file = folder / "timing.json"
    if timing_file.is_file():
        timing = json.loads(timing_file.read_text())
        row["seconds"] = (timing["fit_seconds"] or 0.0) + timing["reconstruct_seconds"]
        row["train_seconds"] = timing["fit_seconds"]
        if "inference_seconds" in timing:  # runs made before it was recorded have none
            row["seconds_per_scan"] = timing["inference_seconds"] / timing["test_objects"]
    row["clip_bite_fraction"] = clip_bite_fraction(folder / "history.csv")
    return row


def cell_summaries(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell of the run rows (in order of first appearance): a ``mean`` and a ``std`` row over its runs' scores.

    Nulls (an undefined score, a missing run) are left out; std is the sample standard deviation
    (null below two values). ``status`` counts the runs' statuses, e.g. ``ok=2 collapsed=1``."""
    summaries = []
    rows = [r for r in rows if r["row"] == "run"]  # iterative baseline rows have no seeds to summarize
    for cell in dict.fromkeys(r["cell"] for r in rows):
        members = [r for r in rows if r["cell"] == cell]
        counts = Counter(r["status"] for r in members)
        status = " ".join(f"{name}={count}" for name, count in sorted(counts.items()))
        mean, spread = {"row": "mean", "cell": cell, "status": status}, {"row": "std", "cell": cell, "status": status}
        architectures = {r.get("architecture") for r in members} - {None}
        if len(architectures) == 1:
            mean["architecture"] = spread["architecture"] = architectures.pop()
        for score in SCORES:
            values = [r[score] for r in members if isinstance(r.get(score), (int, float)) and math.isfinite(r[score])]
            mean[score] = statistics.fmean(values) if values else None
            spread[score] = statistics.stdev(values) if len(values) > 1 else None
        mean["collapsed"] = spread["collapsed"] = counts.get("collapsed", 0)
        summaries += [mean, spread]
    return summaries


def shown_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """RUN_COLUMNS, without the baseline's own columns when no row is a baseline row."""
    if any(r["row"] == "baseline" for r in rows):
        return list(RUN_COLUMNS)
    return [c for c in RUN_COLUMNS if c not in BASELINE_COLUMNS]


def write_tables(folder: Path, rows: Sequence[dict[str, Any]], swept: Sequence[str]) -> list[dict[str, Any]]:
    """metrics_table.csv (run rows, then mean and std rows) and metrics_table.md; returns every row."""
    from ptycho_torch import artifacts

    columns = [*RUN_COLUMNS[:4], *[name for name in swept if name != "architecture"], *shown_columns(rows)[4:]]
    table = [*rows, *cell_summaries(rows)]
    artifacts.write_csv(folder / "metrics_table.csv", table, columns)
    with artifacts.atomic_file(folder / "metrics_table.md", "w") as handle:
        handle.write(markdown(rows, columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """The runs, then per cell ``mean +- std`` of each score."""
    run_columns = [c for c in columns if c != "row"]
    lines = ["| " + " | ".join(run_columns) + " |", "|" + "---|" * len(run_columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in run_columns) + " |" for row in rows]
    summaries = cell_summaries(rows)
    summary_columns = ["cell", "runs", *SCORES]
    lines += ["", "| " + " | ".join(summary_columns) + " |", "|" + "---|" * len(summary_columns)]
    for mean, spread in zip(summaries[::2], summaries[1::2]):
        cells = [mean["cell"], mean["status"]]
        cells += [_cell(mean[s]) + ("" if spread[s] is None else f" ± {spread[s]:.2g}") for s in SCORES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PLOTTED = ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr", "clip_bite_fraction")


def sweep_series(rows: Sequence[dict[str, Any]], x_name: str, x_values: Sequence[Any],
                 line_names: Sequence[str]) -> dict[str, dict[str, list[tuple[float | None, float | None]]]]:
    """For ``sweep.png``: line label -> metric -> (mean, std) over seeds at each x value; one line
    per combination of the other swept settings."""
    lines: dict[str, dict[str, list]] = {}
    combos = list(dict.fromkeys(tuple(r.get(n) for n in line_names) for r in rows))
    for combo in combos:
        label = ", ".join(f"{n}={_cell(v)}" for n, v in zip(line_names, combo)) or "all runs"
        lines[label] = {}
        for metric in PLOTTED:
            points = []
            for x in x_values:
                values = [r[metric] for r in rows if r.get(x_name) == x and tuple(r.get(n) for n in line_names) == combo
                          and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
                points.append((statistics.fmean(values) if values else None,
                               statistics.stdev(values) if len(values) > 1 else None))
            lines[label][metric] = points
    return lines
