"""The compare wrapper's iterative reference rows (``--baseline 50,200 [--baseline-init pinn]``).

The study's test split is reconstructed by the iterative engine (``ptycho_torch.baseline``) from a
flat start, and with ``--baseline-init pinn`` again from each cell's stitched PINN reconstruction
(first seed, runs whose status is ok). Rows report the same scores as the runs at every requested
iteration count, the engine's wall time (on the CPU, setup included, after one untimed warm-up
iteration, at the runs' thread count; in total and per test object) and, for warm starts, the
iterations and the seconds per test object to reach the flat start's phase SSIM at the largest
count (not counting the PINN's own prediction). ``baseline/baseline.json`` keeps the rows (``--summarize`` reads them back),
``baseline/recon_<start>.npz`` the objects at the largest count. Torch-free at import.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ptycho_torch.config import plain_int
from scripts.studies.study_table import score_columns
from scripts.studies.sweep import UNREADABLE

BASELINE_RECORD = Path("baseline") / "baseline.json"
INITS = ("flat", "pinn")
FLAT = "flat"


# 100,000 iterations of the demo's test split take about 45 minutes here; a count far past it is a typo.
MAX_ITERATIONS = 100_000


def parse_iterations(text: str) -> tuple[int, ...]:
    """``50,200`` -> (50, 200): distinct integers in [1, MAX_ITERATIONS], in increasing order."""
    counts = [plain_int(w, digits=len(str(MAX_ITERATIONS))) for w in text.split(",")]
    if not all(c is not None and 1 <= c <= MAX_ITERATIONS for c in counts):
        raise argparse.ArgumentTypeError(f"expected comma-separated iteration counts from 1 to {MAX_ITERATIONS} "
                                         f"(e.g. 50,200), got {text!r}")
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"{text!r}: an iteration count is given twice")
    return tuple(sorted(counts))


def start_name(init: str | None) -> str:
    """The row's start: ``flat`` or ``pinn:<cell>``."""
    return FLAT if init is None else f"pinn:{init}"


def run_baselines(out: Path, test_data, counts: Sequence[int], warm_starts: Mapping[str, Any], execution,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Flat start, then one warm start per entry of ``warm_starts`` (cell name -> its stitched (I, H, W)
    reconstruction); writes baseline/ and returns the table rows."""
    from ptycho_torch import artifacts, baseline
    from ptycho_torch.cpu_settings import intra_op_threads

    results = []
    with intra_op_threads(execution.num_threads):  # one CPU process: the runs' count, not shared among devices
        baseline.warm_up(test_data)
        flat = baseline.run(test_data, list(counts), seed=seed)
        target = flat["at"][max(counts)]["metrics"]["mean"]["phase"]["ssim"]
        if target is None and warm_starts:
            print("warning: --baseline-init pinn: the flat start's phase SSIM is undefined (constant ground-truth "
                  "phase or a non-finite result), so no warm start has a target to reach", file=sys.stderr)
        results.append((FLAT, flat))
        for cell, init in warm_starts.items():
            results.append((start_name(cell), baseline.run(test_data, list(counts), init=init, seed=seed,
                                                           target_phase_ssim=target)))
    folder = out / BASELINE_RECORD.parent
    folder.mkdir(exist_ok=True)  # emptied before the runs (remove_stale_baseline)
    objects = len(test_data.YY_ground_truth)
    rows = [row for start, result in results for row in result_rows(start, result, objects, target)]
    for start, result in results:
        artifacts.write_npz(folder / f"recon_{start.replace(':', '_')}.npz",
                            recon=result["at"][max(counts)]["objects"], ground_truth=test_data.YY_ground_truth)
    artifacts.write_json(out / BASELINE_RECORD, {"engine": baseline.ENGINE, "counts": list(counts), "seed": seed,
                                                 "target_phase_ssim": target, "rows": rows,
                                                 "threads": {start: result["threads"] for start, result in results}})
    return rows


def result_rows(start: str, result: dict[str, Any], objects: int, target: float | None) -> list[dict[str, Any]]:
    """One table row per iteration count of one start."""
    reached = result["reached"]
    rows = []
    for count, at in sorted(result["at"].items()):
        mean = at["metrics"]["mean"]
        row = {"row": "baseline", "cell": f"iterative {count} it. from {start}", "architecture": "iterative",
               "status": "ok" if at["finite"] else "failed", "init": start, "iterations": count,
               "status_reason": None if at["finite"] else "the iterative reconstruction is not finite (NaN or inf)",
               "seconds": at["seconds"], "seconds_per_scan": at["seconds"] / objects, "target_phase_ssim": target,
               "target_iterations": reached["iterations"] if reached else None,
               "target_seconds_per_scan": reached["seconds"] / objects if reached else None}
        rows.append(row | score_columns(mean))
    return rows


def remove_stale_baseline(out: Path) -> None:
    """A study run again replaces its baseline: rows and warm starts of earlier runs would describe
    PINNs that may have been trained again (without --baseline the study then has none)."""
    from ptycho_torch.output_folder import BASELINE_TREE, remove_previous_run

    remove_previous_run(out, {BASELINE_RECORD.parent.name: BASELINE_TREE})  # the user's files there stay


def read_baseline_rows(out: Path) -> list[dict[str, Any]]:
    """The rows ``run_baselines`` wrote into ``out`` (none when it holds no baseline)."""
    record = out / BASELINE_RECORD
    if not record.is_file():
        return []
    try:
        rows = json.loads(record.read_text())["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise TypeError("rows is not a list of rows")
    except UNREADABLE as err:  # damaged: no rows, said once
        print(f"warning: {record} cannot be read ({type(err).__name__}); the tables have no baseline rows",
              file=sys.stderr)
        return []
    return rows


def flat_recon(out: Path) -> Any:
    """The flat start's objects at the largest count, for comparison.png (None when absent)."""
    import numpy as np

    path = out / BASELINE_RECORD.parent / f"recon_{FLAT}.npz"
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return saved["recon"]
