"""Training-step times on a GPU: forward, loss, backward and Adam of every architecture (batch 16,
N=32, default settings, outside Lightning), in float32 and under bf16 autocast, with a float32
matmul timed on the same device.

    python -m benchmarks.bench_gpu [--variants cnn:1,fno:1,hybrid:1] [--steps 30] [--device cuda]

Each figure is a median over ``--steps`` steps after five warm-up steps, the device synchronized
around every step. ``--device cpu`` runs the same code on the CPU (a check of the script; the CPU's
own figures come from ``bench_throughput``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks.arguments import variants
from benchmarks.bench_throughput import Variant, matmul_rate, synchronize
from benchmarks.host import host_line
from scripts.studies.runner_cli import integer_at_least

WARMUP = 5


def device(text: str) -> torch.device:
    """'cuda' or 'cpu' (whether this machine has the GPU is checked when the command runs)."""
    if text not in ("cuda", "cpu"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be cuda or cpu")
    return torch.device(text)


def median_step_ms(variant: Variant, where: torch.device, steps: int) -> float:
    """The median wall time of ``variant``'s training step, the device synchronized around each."""
    for _ in range(WARMUP):
        variant.step()
    times = []
    for _ in range(steps):
        synchronize(where)
        start = time.perf_counter()
        variant.step()
        synchronize(where)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def on_device(architecture: str, gridsize: int, precision: str, where: torch.device) -> Variant:
    """The benchmark's training step (``bench_throughput.Variant``: bf16 autocast for bf16-mixed), its
    model and batch moved to ``where`` (the optimizer keeps the same parameter objects)."""
    variant = Variant(architecture, gridsize, precision=precision)
    variant.module.to(where)
    variant.batch = {key: value.to(where) for key, value in variant.batch.items()}
    return variant


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=variants, default=variants("cnn:1,fno:1,hybrid:1,cnn:2,fno:2,hybrid:2"),
                        help="ARCHITECTURE:GRIDSIZE, comma-separated")
    parser.add_argument("--steps", type=integer_at_least(1), default=30, help="timed steps per figure")
    parser.add_argument("--device", type=device, default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--matmul-size", type=integer_at_least(1), default=8192, help="side of the reference matmul")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    where = args.device
    if where.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible on this machine (--device cpu runs the same steps here)")
    name = torch.cuda.get_device_name(where) if where.type == "cuda" else "the CPU"
    print(host_line())
    print(f"device: {name}; load {os.getloadavg()[0]:.2f}")
    rate = matmul_rate(repeats=10, size=args.matmul_size, device=where) / 1e3
    print(f"matmul {args.matmul_size}^3 float32: {rate:.1f} TFLOP/s "
          f"(TF32 for matmuls {torch.backends.cuda.matmul.allow_tf32}, for cuDNN {torch.backends.cudnn.allow_tf32})")
    print("| variant | float32 ms | bf16 autocast ms |\n|---|---|---|")
    for architecture, gridsize in args.variants:
        float32, bf16 = (median_step_ms(on_device(architecture, gridsize, precision, where), where, args.steps)
                         for precision in ("32-true", "bf16-mixed"))
        print(f"| {architecture} gs{gridsize} | {float32:.2f} | {bf16:.2f} |", flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
