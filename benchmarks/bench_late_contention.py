"""A busy process joins a run that started on an idle machine, and later leaves it.

    python -m benchmarks.bench_late_contention [--variants fno:1,hybrid:1,cnn:1] [--idle 3] [--busy 8]
        [--after 6]

A run with automatic threads takes the idle machine's count when it starts (every core). Per
variant, training steps (bench_throughput's: batch 16, N=32, default settings, outside Lightning)
run for IDLE + BUSY + AFTER seconds; a process keeping one core busy starts after IDLE seconds and
is killed BUSY seconds later. Twice, in alternating order: with the starting count kept (what a
run did before its count was re-chosen, and what an explicit ``--num-threads`` does), and with the
count re-chosen between steps by ``cpu_settings.ThreadAdapter`` (what a fit with automatic threads
does). Printed per variant: the idle step (the median over the steps before the busy process and
those from RISE seconds after it left, when the re-chosen count has risen again); the step while
the busy process runs, from SETTLE seconds after it started (the kept count's and the re-chosen
one's, each as a slowdown against the same timeline's idle step, with the count in use, and the
ratio of the two, which the host's drift between timelines moves least); how long
the re-chosen count took to drop; and the count after the busy process left.
The 1-minute load average is printed beside the figures: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import NamedTuple

import torch

from benchmarks.arguments import variants
from benchmarks.bench_throughput import Variant, busy_process, load, reference_rates
from benchmarks.host import host_line
from ptycho_torch.cpu_settings import ThreadAdapter, flushed_denormals, intra_op_threads
from scripts.studies.runner_cli import integer_at_least

SETTLE = 3.5  # seconds after the busy process starts: the window it starts in, then two busy windows
RISE = 3.5  # seconds after it ends: the window it ended in, then two free windows, before the count rises


class Step(NamedTuple):
    at: float  # seconds since the timeline began, when the step started
    seconds: float
    threads: int


def timeline(variant: Variant, adapt: bool, idle: float, busy: float, after: float) -> list[Step]:
    """Steps over idle + busy + after seconds, a busy process beside them from ``idle`` to
    ``idle + busy``; the automatic count of the idle machine at the start, re-chosen if ``adapt``."""
    steps: list[Step] = []
    with intra_op_threads(0):  # sampled now, on the idle machine
        adapter = ThreadAdapter() if adapt else None
        process, began = None, time.monotonic()
        try:
            while (now := time.monotonic() - began) < idle + busy + after:
                if process is None and idle <= now < idle + busy:
                    process = busy_process()
                elif process is not None and now >= idle + busy and process.poll() is None:
                    process.kill()
                    process.wait()
                threads = torch.get_num_threads()
                steps.append(Step(now, sum(variant.step()), threads))
                if adapter is not None:
                    adapter.poll()
        finally:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    return steps


class Summary(NamedTuple):
    idle: float  # median step seconds without the busy process: before it, and from RISE seconds after it
    joined: float  # median step seconds while it runs, from SETTLE seconds after it started
    joined_threads: tuple[int, ...]  # the counts in use then
    dropped_after: float | None  # seconds from its start to the first step with fewer threads (None: never)
    left_threads: tuple[int, ...]  # the counts in use from RISE seconds after it ended


def summary(steps: list[Step], idle: float, busy: float) -> Summary:
    """The phases of one timeline; each must hold a step."""
    def phase(start: float, end: float) -> list[Step]:
        chosen = [step for step in steps if start <= step.at < end]
        if not chosen:
            raise ValueError(f"no step between {start:.1f} and {end:.1f} s: lengthen the phases")
        return chosen

    before, joined, left = phase(0.0, idle), phase(idle + SETTLE, idle + busy), phase(idle + busy + RISE, float("inf"))
    start_threads = before[0].threads
    drop = next((step.at - idle for step in steps if step.at >= idle and step.threads < start_threads), None)
    # both idle phases: the host's own noise drifts by 10-20 % over a timeline
    return Summary(statistics.median(s.seconds for s in before + left), statistics.median(s.seconds for s in joined),
                   tuple(sorted({s.threads for s in joined})), drop, tuple(sorted({s.threads for s in left})))


def table(rows: dict[str, dict[bool, Summary]]) -> str:
    lines = ["| variant | idle ms | busy process: count kept ms | slowdown | threads | re-chosen ms | slowdown "
             "| threads | kept / re-chosen | dropped after s | threads after it left |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        kept, chosen = runs[False], runs[True]
        counts = ",".join(str(n) for n in chosen.joined_threads)
        dropped = "never" if chosen.dropped_after is None else f"{chosen.dropped_after:.1f}"
        lines.append(f"| {name} | {chosen.idle * 1e3:.1f} | {kept.joined * 1e3:.1f} | {kept.joined / kept.idle:.2f}x "
                     f"| {','.join(str(n) for n in kept.joined_threads)} | {chosen.joined * 1e3:.1f} "
                     f"| {chosen.joined / chosen.idle:.2f}x | {counts} | {kept.joined / chosen.joined:.2f}x | {dropped} "
                     f"| {','.join(str(n) for n in chosen.left_threads)} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=variants, default=variants("fno:1,hybrid:1,cnn:1"),
                        help="comma-separated ARCH:GRIDSIZE")
    parser.add_argument("--idle", type=integer_at_least(1), default=3, help="seconds before the busy process")
    parser.add_argument("--busy", type=integer_at_least(3), default=8, help="seconds it runs")
    parser.add_argument("--after", type=integer_at_least(4), default=6, help="seconds after it ends")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    print(host_line())
    with intra_op_threads(0):  # the idle machine's count, as the timelines start with
        reference_rates(["32-true"])  # the host's phase: its matmul rate now and after
    rows: dict[str, dict[bool, Summary]] = {}
    with flushed_denormals():  # as training runs
        for index, (architecture, gridsize) in enumerate(args.variants):
            variant = Variant(architecture, gridsize)
            for _ in range(3):
                variant.step()  # warm-up
            rows[variant.name] = {}
            for adapt in ((False, True) if index % 2 == 0 else (True, False)):
                steps = timeline(variant, adapt, args.idle, args.busy, args.after)
                rows[variant.name][adapt] = summary(steps, args.idle, args.busy)
                print(f"{variant.name} {'re-chosen' if adapt else 'kept'}: {len(steps)} steps, load {load()}",
                      flush=True)
    print(table(rows))
    with intra_op_threads(0):
        reference_rates(["32-true"], "again after timing")
    print(f"load {load()}")


if __name__ == "__main__":
    main()
