"""Wall time and peak memory of simulating grid-lines datasets (train.npz + test.npz).

    cd <repo> && python -m benchmarks.bench_simulation [--repeats 5]

Cases: (a) the default SimulationConfig(); (b) upstream size at N=64: a 392 px object, 400
lines, train stride 4 (6,889 patterns) and test stride 10 (1,089 patterns), one image each.

Wall time: median over --repeats in-process runs of ``simulate_dataset`` (objects, forward
model, Poisson noise, validation and both files written), after one warm-up run.
Peak memory: one fresh subprocess per case, which reports the growth of its peak resident
set (Linux VmHWM, reset after imports) over its size after imports, and the tracemalloc peak
(numpy and Python allocations; torch's own buffers are not traced).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from ptycho_torch.config import SimulationConfig
from ptycho_torch.scan import raster_positions
from ptycho_torch.simulation import simulate_dataset, split_plan
from scripts.studies.runner_cli import integer_at_least

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "default": SimulationConfig(),
    "upstream_N64": SimulationConfig(N=64, object_size=392, n_lines=400, n_train_images=1, n_test_images=1,
                                     train_stride=4, test_stride=10),
}
MIB = 2**20


def patterns(sim: SimulationConfig) -> dict[str, int]:
    plan = split_plan(sim)
    return {split: n * len(raster_positions(sim.object_size, sim.N, stride)) for split, (n, stride) in plan.items()}


def timed_run(sim: SimulationConfig) -> tuple[float, dict[str, int]]:
    """Seconds for one simulate_dataset call and the bytes of each file it wrote."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = simulate_dataset(sim, folder)
        seconds = time.perf_counter() - start
        return seconds, {p.stem: p.stat().st_size for p in paths}


def resident_peak(reset: bool = False) -> int:
    """Bytes of this process's peak resident set (Linux VmHWM; ``reset`` restarts it from now).

    ru_maxrss cannot be used here: Linux carries it across fork/exec from the parent process.
    """
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def measure_memory(case: str) -> dict[str, float]:
    """Run in a fresh process: peak memory of one simulation beyond what the imports hold."""
    before = resident_peak(reset=True)
    tracemalloc.start()
    timed_run(CASES[case])
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_after_imports_mib": before / MIB, "rss_growth_mib": (resident_peak() - before) / MIB,
            "tracemalloc_peak_mib": traced_peak / MIB}


def memory_in_subprocess(case: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.bench_simulation", "--memory-of", case]
    output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def bench(case: str, repeats: int) -> dict:
    sim = CASES[case]
    timed_run(sim)  # warm-up: torch's first FFT and the file system
    runs = [timed_run(sim) for _ in range(repeats)]
    return {"case": case, "patterns": patterns(sim), "bytes": runs[0][1],
            "median_s": statistics.median(s for s, _ in runs), "runs_s": [round(s, 3) for s, _ in runs],
            **memory_in_subprocess(case)}


def report(row: dict) -> str:
    sizes = ", ".join(f"{k} {row['patterns'][k]} patterns / {row['bytes'][k] / MIB:.1f} MiB" for k in row["patterns"])
    return (f"{row['case']:>13}: median {row['median_s']:.3f} s over {len(row['runs_s'])} runs {row['runs_s']}; "
            f"peak RSS +{row['rss_growth_mib']:.0f} MiB over {row['rss_after_imports_mib']:.0f} MiB after imports, "
            f"tracemalloc peak {row['tracemalloc_peak_mib']:.0f} MiB; {sizes}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=integer_at_least(1), default=5, help="timed runs per case (median reported)")
    parser.add_argument("--memory-of", choices=CASES, help=argparse.SUPPRESS)  # the subprocess's job
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of)))
        return
    for case in CASES:
        print(report(bench(case, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
