"""Training-step costs of the default model: clipping, gradient-norm logging, Lightning overhead, memory.

    python -m benchmarks.bench_training [--steps 40] [--repeats 5]

Prints medians (per-step wall time, over steps after a warm-up, then the median over repeats,
variants interleaved so that machine load hits them alike) and the ratios the project targets:
  norm clipping / no clipping                       (target <= 1.03)
  grad-norm logging / no logging                    (target <= 1.03), beside a per-parameter .item() baseline
  Lightning fit of K steps / plain loop of K steps  (target <= 1.15)
and the peak resident memory of a fit of the default model (a fresh process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.host import host_line
from ptycho_torch.clipping import clip_gradients_, global_grad_norm
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, SimulationConfig, TrainingConfig
from ptycho_torch.model import PtychoPINN
from ptycho_torch.optimization import build_optimizer
from ptycho_torch.probe import ideal_probe
from ptycho_torch.scan import raster_positions
from ptycho_torch.simulation import simulate_split
from ptycho_torch.training import train
from scripts.studies.runner_cli import integer_at_least

QUIET = dict(enable_progress_bar=False, logger_backend="none", enable_checkpointing=False)


class StepTimer(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)


class ItemNormBaseline(PtychoPINN):
    """The naive way to record a norm: one host sync per parameter (.item() in a Python loop)."""

    def on_before_optimizer_step(self, optimizer):
        self.naive_norm = sum(p.grad.norm().item() ** 2 for p in self.parameters() if p.grad is not None) ** 0.5
        super().on_before_optimizer_step(optimizer)


def dataset(steps: int, batch: int):
    sim = SimulationConfig()
    images = -(-steps * batch // len(raster_positions(sim.object_size, sim.N, sim.train_stride)))  # ceil
    return simulate_split(sim, images, sim.train_stride, np.random.default_rng(0), ideal_probe(sim.N, sim.probe_defocus))


def configs(clip: float | None, log_norms: bool, steps: int) -> tuple[TrainingConfig, PyTorchExecutionConfig]:
    cfg = TrainingConfig(epochs=1, gradient_clip_val=clip, log_grad_norm=log_norms, val_fraction=0.0)
    return cfg, PyTorchExecutionConfig(gradient_clip_val=clip, learning_rate=cfg.learning_rate, **QUIET)


def fit_step_times(data, clip, log_norms, steps, module_class=PtychoPINN) -> tuple[float, float]:
    """(median step time, whole fit wall time) of a Lightning fit of ``steps`` steps."""
    cfg, execution = configs(clip, log_norms, steps)
    timer = StepTimer()
    keep = slice(0, steps * cfg.batch_size)  # exactly ``steps`` batches in the one epoch
    limited = dataclasses.replace(data, diffraction=data.diffraction[keep], Y_I=data.Y_I[keep], Y_phi=data.Y_phi[keep])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, execution, limited, Path(tmp), callbacks=[timer], module_class=module_class)
        wall = time.perf_counter() - start
    return statistics.median(timer.times[5:]), wall


def plain_loop_time(data, clip, steps) -> float:
    """The same steps without Lightning: forward, loss, backward, norms, clip, Adam step."""
    cfg, _ = configs(clip, True, steps)
    torch.manual_seed(cfg.seed)
    module = PtychoPINN(cfg, torch.from_numpy(data.probeGuess))
    optimizer = build_optimizer(module.parameters(), cfg)
    x = torch.from_numpy(data.diffraction)
    start = time.perf_counter()
    for k in range(steps):
        batch = {"diffraction": x[k * cfg.batch_size:(k + 1) * cfg.batch_size]}
        loss = module.loss(batch)
        loss.backward()
        params = [p for p in module.parameters() if p.grad is not None]
        pre = global_grad_norm(params)
        bool(torch.isfinite(pre))
        clip_gradients_(params, "norm", clip)
        global_grad_norm(params)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def peak_memory_mib(steps: int) -> float:
    """Peak RSS of a fresh process that simulates the default data and fits the default model."""
    code = ("import resource, benchmarks.bench_training as b; d = b.dataset({s}, 16); "
            "b.fit_step_times(d, 1.0, True, {s}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)").format(s=steps)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=integer_at_least(1), default=20)
    parser.add_argument("--repeats", type=integer_at_least(1), default=3)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(2)
    data = dataset(args.steps, 16)
    runs: dict[str, list[float]] = {k: [] for k in ("off", "norm", "nolog", "item", "fit_wall", "loop_wall")}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every variant alike
        runs["off"].append(fit_step_times(data, None, False, args.steps)[0])  # no clipping, no norm logging
        step, wall = fit_step_times(data, 1.0, True, args.steps)  # norm clipping with norm logging
        runs["norm"].append(step)
        runs["fit_wall"].append(wall)
        runs["nolog"].append(fit_step_times(data, 1.0, False, args.steps)[0])  # clipping, no norm logging
        runs["item"].append(fit_step_times(data, 1.0, True, args.steps, ItemNormBaseline)[0])
        runs["loop_wall"].append(plain_loop_time(data, 1.0, args.steps))
    med = {k: statistics.median(v) for k, v in runs.items()}
    report = {
        "machine": f"{torch.get_num_threads()} torch threads, load avg {os.getloadavg()[0]:.2f}",
        "host": host_line(),
        "model": f"default ModelConfig ({ModelConfig().architecture}, N={ModelConfig().N}), batch 16, adam",
        "median_step_s": {"no_clip_no_log": round(med["off"], 5), "clip_no_log": round(med["nolog"], 5),
                          "clip_and_log": round(med["norm"], 5), "clip_log_plus_item_baseline": round(med["item"], 5)},
        "ratio_norm_clip_vs_off": round(med["nolog"] / med["off"], 4),
        "ratio_grad_norm_logging_vs_off": round(med["norm"] / med["nolog"], 4),
        "ratio_per_parameter_item_baseline_vs_off": round(med["item"] / med["nolog"], 4),
        f"lightning_fit_{args.steps}_steps_s": round(med["fit_wall"], 3),
        f"plain_loop_{args.steps}_steps_s": round(med["loop_wall"], 3),
        "ratio_lightning_vs_plain_loop": round(med["fit_wall"] / med["loop_wall"], 4),
        "peak_rss_mib_fit_default_model": round(peak_memory_mib(args.steps), 1),
        "own_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
