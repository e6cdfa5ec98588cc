"""Quality and cost of the overlap constraint: gridsize 1 against 2 on the README demo geometry.

    python -m benchmarks.bench_gridsize [--architectures cnn,hybrid] [--epochs 30] [--out runs/bench_gridsize]

Runs the runner as a fresh process per configuration (architecture x gridsize x clip off / 1.0,
seed 0, everything else at its default: N=32, two 128 px training objects at stride 4), then one
1-epoch run per architecture and gridsize to separate the per-epoch cost from the fixed cost
(simulation, prediction, stitching, pictures). Prints, per run: amplitude and phase SSIM, PSNR,
FRC50, phase_seam_ratio, wall time, peak resident memory, and the load average beside it.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.arguments import architectures
from benchmarks.host import host_line
from scripts.studies.runner_cli import integer_at_least

RUNNER = [sys.executable, "-m", "scripts.studies.grid_lines_torch_runner", "--no-enable-progress-bar"]


def run(out: Path, argv: list[str]) -> dict:
    """One runner process: (metrics, wall seconds, peak RSS MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen([*RUNNER, *argv, "--output-dir", str(out), "--overwrite"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 3):
        raise SystemExit(f"run {out} failed with status {os.waitstatus_to_exitcode(status)}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"metrics": metrics, "wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "load": os.getloadavg()[0]}


def row(name: str, result: dict) -> str:
    mean = result["metrics"]["mean"]
    cell = lambda v, f: "null" if v is None else format(v, f)  # noqa: E731
    scores = [cell(mean[c][m], ".3f" if m != "psnr" else ".2f") for c in ("amplitude", "phase")
              for m in ("ssim", "psnr", "frc50")]
    return (f"| {name} | " + " | ".join(scores) + f" | {cell(result['metrics']['phase_seam_ratio'], '.2f')} | "
            f"{result['wall_s']:.0f} | {result['peak_mib']:.0f} | {result['load']:.2f} |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", type=architectures, default=architectures("cnn,hybrid"))
    parser.add_argument("--epochs", type=integer_at_least(2), default=30,
                        help="epochs of the timed runs (>= 2: a 1-epoch run is the fixed cost subtracted)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_gridsize"))
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    print(host_line())
    print("| run | amp SSIM | amp PSNR | amp FRC50 | phase SSIM | phase PSNR | phase FRC50 | seam ratio "
          "| wall s | peak MiB | load |")
    print("|---|" + "---|" * 10)
    fixed = {}
    for arch in args.architectures:
        for gridsize in (1, 2):
            once = run(args.out / f"{arch}_gs{gridsize}_1epoch", ["--architecture", arch, "--gridsize",
                                                                  str(gridsize), "--epochs", "1"])
            fixed[arch, gridsize] = once["wall_s"]
            for clip in ("none", "1.0"):
                name = f"{arch} gridsize {gridsize} clip {clip}"
                result = run(args.out / f"{arch}_gs{gridsize}_clip{clip}",
                             ["--architecture", arch, "--gridsize", str(gridsize), "--grad-clip", clip,
                              "--epochs", str(args.epochs), "--seed", "0"])
                per_epoch = (result["wall_s"] - once["wall_s"]) / (args.epochs - 1)
                print(row(name, result) + f" per epoch {per_epoch:.2f} s", flush=True)


if __name__ == "__main__":
    main()
