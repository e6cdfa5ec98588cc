"""Training-step throughput against the machine's arithmetic limit, per architecture and gridsize.

    python -m benchmarks.bench_throughput [--variants cnn:1,fno:1,hybrid:1,cnn:2,fno:2,hybrid:2]
        [--steps 20] [--repeats 5] [--threads 2] [--profile fno:1] [--layers fno:1] [--contention] [--compile]
        [--precisions 32-true,bf16-mixed] [--earlier CHECKOUT]

One step = forward, loss, backward and Adam (the default TrainingConfig: batch 16, N=32, no
clipping) on a batch of simulated grid-lines patterns, outside Lightning (its per-step overhead is
bench_training's subject). Per variant it prints:
  GFLOP per step   torch's flop counter over one step, plus the FFTs it does not count
                   (5 n log2 n per complex transform of n points, half that for real ones), with
                   complex matrix products at 8 real FLOPs per multiply-add (the counter says 2)
  step ms          median over repeats of the median step time (warm-up first; variants
                   interleaved so that drifting load hits them alike), and the repeats' range:
                   a wide one says the machine was noisy (other tenants of the host, say)
  GFLOP/s, ratio   achieved rate, and its ratio to a 1024^3 matmul timed in this process, in
                   float32, or in bf16 for a bf16-mixed variant (its forward under bf16 autocast,
                   as Lightning's bf16-mixed runs it; the spectral products stay float32)
  contended ms     (--contention) the same step while another process keeps one core busy, with
                   the automatic thread count (``cpu_settings.auto_threads``) against a fixed --threads;
                   and the step with the automatic count on the idle machine: the slowdown is the
                   lost core (idle-machine ratio) times the interference (contended / idle, same threads)
With --profile ARCH:GRIDSIZE, a torch.profiler table of the top operators of that step (per precision);
the profiler's per-call overhead inflates small operations several times here, so --layers
ARCH:GRIDSIZE prints wall-clock medians instead: each generator layer's forward and backward
(hooks) and the step's phases (forward with loss, backward, optimizer).
With --earlier CHECKOUT (a checkout of an earlier commit, e.g. ``git worktree add /tmp/before COMMIT``),
that code's ptycho_torch is loaded beside this one (``earlier_code``) and each variant's step of it
runs next to this code's in every round, in this process: the speed-up per round and its median are
free of the machine's drift between processes, and both codes run with this process's settings.
With --compile, each variant again with the generator run through torch.compile (timed after
its first, compiling, step).
The 1-minute load average is printed beside every figure: run it on an otherwise idle machine.
The first line names the host (``host``): figures from different CPUs compare only as ratios.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from benchmarks.arguments import variant, variants
from benchmarks.earlier_code import PACKAGE, checkout, load_earlier
from benchmarks.host import host_line
from ptycho_torch.generators import ConvDecoder, LiftedSequential
from scripts.studies.runner_cli import integer_at_least

aten = torch.ops.aten
MATMUL_SIZE = 1024


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# --- work per step ------------------------------------------------------------------------------

def _fft_points(shape, dim) -> tuple[int, int]:
    """(transforms, points per transform) of an FFT over ``dim`` of a tensor of ``shape``."""
    points = math.prod(shape[d] for d in dim)
    return math.prod(shape) // points, points


def _complex_fft_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    transforms, n = _fft_points(input_shape, dim)
    return int(transforms * 5 * n * math.log2(n))


def _real_fft_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    real_side = max(input_shape, out_shape, key=math.prod)  # r2c reads it, c2r writes it
    transforms, n = _fft_points(real_side, dim)
    return int(transforms * 2.5 * n * math.log2(n))  # a real transform costs half a complex one


FFT_FLOPS = {aten._fft_c2c: _complex_fft_flops, aten._fft_r2c: _real_fft_flops, aten._fft_c2r: _real_fft_flops}


def _complex_aware(product):
    """torch's count of a matrix product (2 m k n), times 4 when it is complex: a complex
    multiply-add is 4 real multiplications and 4 additions. The counter itself counts shapes only."""
    def count(*args, out_val=None, **kwargs) -> int:
        flops = product(*args, out_val=out_val, **kwargs)
        return 4 * flops if any(isinstance(a, torch.Tensor) and a.is_complex() for a in args) else flops
    count._get_raw = True  # hand ``count`` the tensors, not their shapes
    return count


# each product op, counted as the op whose formula it shares: the in-place sums (``baddbmm_``: the
# spectral synthesis adds into the convolution's output) are ops of their own to the counter, which
# would otherwise not count them at all
_COUNTED_AS = {aten.mm: aten.mm, aten.addmm: aten.addmm, aten.addmm_: aten.addmm,
               aten.bmm: aten.bmm, aten.baddbmm: aten.baddbmm, aten.baddbmm_: aten.baddbmm}
PRODUCT_FLOPS = {op: _complex_aware(flop_registry[formula]) for op, formula in _COUNTED_AS.items()}


def step_flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False, custom_mapping={**FFT_FLOPS, **PRODUCT_FLOPS})
    with counter:
        step()
    return counter.get_total_flops()


MATMUL_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16}


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a GPU's kernels run after the call that launched them returns)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(repeats: int = 7, dtype: torch.dtype = torch.float32, size: int = MATMUL_SIZE,
                device: torch.device | str = "cpu") -> float:
    """GFLOP/s of a size^3 matmul in ``dtype`` on ``device`` in this process (median of ``repeats``)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


# --- one training step --------------------------------------------------------------------------

EARLIER_SUFFIX = " earlier"  # a variant of the earlier code: its name is this code's variant's, plus this


def modules(package: str, *names: str) -> list:
    """``package``'s modules ``names`` (this code's ptycho_torch, or the earlier checkout's)."""
    return [importlib.import_module(f"{package}.{name}") for name in names]


def first_batch(gridsize: int, batch_size: int, package: str = PACKAGE) -> dict[str, torch.Tensor]:
    config, simulation, datamodule, probe = modules(package, "config", "simulation", "datamodule", "probe")
    sim = config.SimulationConfig()
    data = simulation.simulate_split(sim, 1, sim.train_stride, np.random.default_rng(0),
                                     probe.ideal_probe(sim.N, sim.probe_defocus))
    dataset = (datamodule.PatternDataset(data) if gridsize == 1
               else datamodule.GroupDataset(data, gridsize, sim.test_stride))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    return next(iter(loader))


class Variant:
    """A model, its optimizer and a batch: ``step()`` is one training step. Built from ``package``:
    this code's ptycho_torch, or an earlier checkout's loaded beside it (``earlier_code``)."""

    def __init__(self, architecture: str, gridsize: int, compile_generator: bool = False, precision: str = "32-true",
                 package: str = PACKAGE):
        self.name = (f"{architecture} gs{gridsize}" + (" compiled" if compile_generator else "")
                     + ("" if precision == "32-true" else f" {precision}")
                     + ("" if package == PACKAGE else EARLIER_SUFFIX))
        self.precision = precision
        config, model, optimization, probe = modules(package, "config", "model", "optimization", "probe")
        cfg = config.TrainingConfig(model=config.ModelConfig(architecture=architecture, gridsize=gridsize))
        self.batch = first_batch(gridsize, cfg.batch_size, package)
        torch.manual_seed(0)
        self.module = model.PtychoPINN(cfg, torch.from_numpy(probe.ideal_probe(cfg.model.N, 1.0)))
        if compile_generator:  # an experiment, not a setting: it did not pay here (docs/throughput.md)
            self.module.generator = torch.compile(self.module.generator)
        self.optimizer = optimization.build_optimizer(self.module.parameters(), cfg)

    def step(self) -> tuple[float, float, float]:
        """One step; its phases' wall times in seconds: forward with loss, backward, optimizer."""
        start = time.perf_counter()
        with torch.autocast(self.module.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed"):
            loss = self.module.loss(self.batch)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return forward - start, backward - forward, time.perf_counter() - backward

    def median_step(self, steps: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            self.step()
        return statistics.median(sum(self.step()) for _ in range(steps))


def timed_rounds(variants: list[Variant], steps: int, repeats: int) -> dict[str, list[float]]:
    """Each variant's median step time in each of ``repeats`` rounds (variants interleaved, in the
    reverse order every other round, so that no variant always runs right after the same one)."""
    rounds: dict[str, list[float]] = {v.name: [] for v in variants}
    for repeat in range(repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            rounds[variant.name].append(variant.median_step(steps))
    return rounds


def timed(variants: list[Variant], steps: int, repeats: int) -> dict[str, float]:
    """Median over ``repeats`` rounds (variants interleaved) of each variant's median step time."""
    return {name: statistics.median(times) for name, times in timed_rounds(variants, steps, repeats).items()}


# --- contention ---------------------------------------------------------------------------------

def busy_process() -> subprocess.Popen:
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contended(variants: list[Variant], steps: int, repeats: int,
              fixed_threads: int) -> dict[str, tuple[int, float, float, float]]:
    """Per variant: (auto threads, step time with them, step time with ``fixed_threads``), one core
    busy, and the step time with the auto thread count on the idle machine (after the busy process):
    what the run would take with those threads alone, so that auto / alone is the interference."""
    try:
        from ptycho_torch.cpu_settings import auto_threads
    except ImportError:  # a checkout from before the thread setting (a baseline): torch's own default
        auto_threads = torch.get_num_threads

    busy = busy_process()
    try:
        time.sleep(1.0)  # let the busy process reach the scheduler's steady state
        threads = auto_threads()
        result = {}
        for variant in variants:
            torch.set_num_threads(threads)
            auto = timed([variant], steps, repeats)[variant.name]
            torch.set_num_threads(fixed_threads)
            fixed = timed([variant], steps, repeats)[variant.name]
            result[variant.name] = (threads, auto, fixed)
    finally:
        busy.kill()
        busy.wait()
    time.sleep(1.0)
    torch.set_num_threads(threads)
    alone = {variant.name: timed([variant], steps, repeats)[variant.name] for variant in variants}
    torch.set_num_threads(fixed_threads)
    return {name: (*row, alone[name]) for name, row in result.items()}


def profile(variant: Variant, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(3):
        variant.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            variant.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --- where the time goes, by wall clock -----------------------------------------------------------

class ComposedPair(nn.Module):
    """Stands in for a ``LiftedSequential``'s composed lift and first block while a breakdown times
    them (they run as one computation, so they are one row); holds no parameters."""

    def __init__(self, body: LiftedSequential):
        super().__init__()
        object.__setattr__(self, "body", body)  # not a child: the body stays the generator's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LiftedSequential.lifted(self.body, x)

    def install(self) -> None:
        object.__setattr__(self.body, "lifted", self)  # the body's forward now calls this module

    def remove(self) -> None:
        vars(self.body).pop("lifted", None)


def _batched_input(body: nn.Sequential) -> torch.Tensor:
    """A shape-only (meta) batch for the body's first layer: whether it composes depends on no values."""
    return torch.empty(1, getattr(body[0], "in_channels", 1), 1, 1, device="meta")


def timed_layers(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The layers a breakdown times: containers (Sequential, ModuleList, the decoder) are opened,
    everything else (a convolution, a GELU, a spectral block, ...) is one row; a lifted body's lift
    and first block are one row (``ComposedPair``)."""
    rows = []
    children = list(module.named_children())
    if isinstance(module, LiftedSequential) and module.composes(_batched_input(module)):
        rows.append((f"{prefix}0+1 (composed)", ComposedPair(module)))
        children = children[2:]
    for name, child in children:
        label = f"{prefix}{name}"
        if isinstance(child, (nn.Sequential, nn.ModuleList, ConvDecoder)):
            rows += timed_layers(child, label + ".")
        else:
            rows.append((label, child))
    return rows


def layer_breakdown(variant: Variant, steps: int) -> tuple[list[tuple[str, float, float | None]], dict[str, float]]:
    """Median forward and backward wall time (ms) of each layer of the generator over ``steps`` steps,
    by hooks, and the median of each phase of the step (forward with loss, backward, optimizer).
    A layer whose input needs no gradient (the first, reading the data) has no backward of its own to
    time (None): its weight gradients fall to the step's backward phase."""
    layers = [(f"body.{name}", layer) for name, layer in timed_layers(variant.module.generator.body)]
    layers.append(("head", variant.module.generator.head))
    starts: dict[tuple[str, str], float] = {}
    times: dict[tuple[str, str], list[float]] = {}
    needs_gradient: dict[str, bool] = {}

    def start(key):
        def hook(module, inputs, *_):
            if key[1] == "f":
                needs_gradient[key[0]] = any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
            starts[key] = time.perf_counter()
        return hook

    def stop(key):
        return lambda *_: times.setdefault(key, []).append(time.perf_counter() - starts[key])

    handles = []
    pairs = [layer for _, layer in layers if isinstance(layer, ComposedPair)]
    for name, layer in layers:
        handles += [layer.register_forward_pre_hook(start((name, "f"))), layer.register_forward_hook(stop((name, "f")))]
    phases: dict[str, list[float]] = {"forward and loss": [], "backward": [], "optimizer": []}
    try:
        for pair in pairs:
            pair.install()
        for _ in range(3):  # warm-up, which also finds the layers that have a backward to time
            variant.step()
        for name, layer in layers:
            if needs_gradient.get(name):
                handles += [layer.register_full_backward_pre_hook(start((name, "b"))),
                            layer.register_full_backward_hook(stop((name, "b")))]
        times.clear()
        for _ in range(steps):
            for phase, seconds in zip(phases, variant.step()):
                phases[phase].append(seconds)
    finally:
        for handle in handles:
            handle.remove()
        for pair in pairs:
            pair.remove()
    median_ms = lambda key: 1e3 * statistics.median(times[key]) if times.get(key) else None  # noqa: E731
    rows = [(name, median_ms((name, "f")), median_ms((name, "b"))) for name, _ in layers]
    return rows, {phase: 1e3 * statistics.median(values) for phase, values in phases.items()}


def breakdown_table(variant: Variant, steps: int) -> str:
    rows, phases = layer_breakdown(variant, steps)
    lines = ["| layer | forward ms | backward ms |", "|---|---|---|"]
    shown = lambda ms: "-" if ms is None else f"{ms:.3f}"  # noqa: E731  (None: not run, or no backward)
    lines += [f"| {name} | {shown(forward)} | {shown(backward)} |" for name, forward, backward in rows]
    lines.append(f"| all layers | {sum(r[1] or 0.0 for r in rows):.2f} | {sum(r[2] or 0.0 for r in rows):.2f} |")
    lines.append("")
    lines.append("step phases (ms): " + ", ".join(f"{phase} {ms:.2f}" for phase, ms in phases.items())
                 + f"; total {sum(phases.values()):.2f} (hooks included)")
    return "\n".join(lines)


# --- report -------------------------------------------------------------------------------------

def reference_rates(precisions: list[str], when: str = "") -> dict[str, float]:
    """The matmul rate at each precision, printed with the threads and load."""
    rates = {p: matmul_rate(dtype=MATMUL_DTYPES[p]) for p in precisions}
    for p, rate in rates.items():
        print(f"matmul {MATMUL_SIZE}^3 {MATMUL_DTYPES[p]} {when}: {rate:.1f} GFLOP/s, "
              f"{torch.get_num_threads()} threads, load {load()}")
    return rates


def rate_table(variants: list[Variant], flops: dict[str, int], rounds: dict[str, list[float]],
               reference: dict[str, float]) -> str:
    """Per variant: GFLOP per step, the median over rounds of its median step time and the rounds'
    range (a wide range is a noisy machine: the figures of such a run are not to be trusted), the
    rate that median achieves and its share of the matmul rate at the variant's precision."""
    lines = ["| variant | GFLOP/step | step ms | rounds' range ms | GFLOP/s | of matmul |", "|---|---|---|---|---|---|"]
    for v in variants:
        times = rounds[v.name]
        step = statistics.median(times)
        achieved = flops[v.name] / step / 1e9
        lines.append(f"| {v.name} | {flops[v.name] / 1e9:.2f} | {step * 1e3:.1f} | {min(times) * 1e3:.1f}-"
                     f"{max(times) * 1e3:.1f} | {achieved:.1f} | {achieved / reference[v.precision]:.0%} |")
    return "\n".join(lines)


def speedup_table(variants: list[Variant], rounds: dict[str, list[float]]) -> str:
    """Each earlier variant against this code's: median step times, and the ratio of the two in each
    round (the pair ran back to back in it) as median and range."""
    lines = ["| variant | earlier ms | this code ms | speed-up, median of rounds | rounds' range |",
             "|---|---|---|---|---|"]
    for before in (v for v in variants if v.name.endswith(EARLIER_SUFFIX)):
        now = before.name.removesuffix(EARLIER_SUFFIX)
        ratios = [b / a for b, a in zip(rounds[before.name], rounds[now])]
        lines.append(f"| {now} | {statistics.median(rounds[before.name]) * 1e3:.1f} "
                     f"| {statistics.median(rounds[now]) * 1e3:.1f} | {statistics.median(ratios):.2f}x "
                     f"| {min(ratios):.2f}-{max(ratios):.2f}x |")
    return "\n".join(lines)


def parse_precisions(text: str) -> list[str]:
    """'32-true,bf16-mixed' -> each named precision once, in the order given."""
    precisions = list(dict.fromkeys(text.split(",")))
    unknown = [p for p in precisions if p not in MATMUL_DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown[0]!r} is not one of {', '.join(MATMUL_DTYPES)}")
    return precisions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=variants, default=variants("cnn:1,fno:1,hybrid:1,cnn:2,fno:2,hybrid:2"),
                        help="comma-separated ARCH:GRIDSIZE")
    parser.add_argument("--steps", type=integer_at_least(1), default=20)
    parser.add_argument("--repeats", type=integer_at_least(1), default=5)
    parser.add_argument("--threads", type=integer_at_least(1), default=2,
                        help="intra-op threads for the uncontended figures")
    parser.add_argument("--profile", type=variant, default=None, help="ARCH:GRIDSIZE to profile")
    parser.add_argument("--layers", type=variant, default=None,
                        help="ARCH:GRIDSIZE: forward and backward wall time of each layer, and the step's phases")
    parser.add_argument("--contention", action="store_true", help="also time each step beside a busy process")
    parser.add_argument("--compile", action="store_true", help="also time each variant under torch.compile")
    parser.add_argument("--precisions", type=parse_precisions, default=["32-true"],
                        help=f"comma-separated, of {', '.join(MATMUL_DTYPES)}")
    parser.add_argument("--earlier", type=checkout, default=None, metavar="CHECKOUT",
                        help="a checkout of an earlier commit: each variant's step of that code is timed too, "
                             "in this process, next to this code's in every round, and the speed-up printed")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    print(host_line())
    if args.earlier is None:
        return run(args)
    with tempfile.TemporaryDirectory() as scratch:  # the earlier package's copy, for the whole run
        earlier = load_earlier(args.earlier, Path(scratch))
        print(f"earlier code: {args.earlier} (loaded as {earlier.__name__})")
        return run(args, earlier.__name__)


def run(args: argparse.Namespace, earlier: str | None = None) -> None:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as training runs (ptycho_torch.cpu_settings)
    try:
        from ptycho_torch.cpu_settings import retain_freed_memory
    except ImportError:  # a checkout from before the setting (a baseline): glibc's adaptive thresholds
        retain_freed_memory = None
    if retain_freed_memory is not None:
        print(f"freed memory kept for reuse (as runs do): {retain_freed_memory()}")
    pairs = args.variants
    precisions = args.precisions
    packages = [PACKAGE] if earlier is None else [earlier, PACKAGE]  # each earlier step next to this one
    variants = [Variant(a, g, precision=p, package=k) for p in precisions for a, g in pairs for k in packages]
    if args.compile:
        variants += [Variant(a, g, compile_generator=True, precision=p) for p in precisions for a, g in pairs]
    flops = {v.name: step_flops(v.step) for v in variants}
    rates = reference_rates(precisions)
    rounds = timed_rounds(variants, args.steps, args.repeats)
    times = {name: statistics.median(values) for name, values in rounds.items()}
    after = reference_rates(precisions, "again after timing")
    reference = {p: statistics.mean([rates[p], after[p]]) for p in precisions}
    print(rate_table(variants, flops, rounds, reference))
    print(f"load {load()}")
    if earlier is not None:
        print("\n" + speedup_table(variants, rounds))
        print(f"load {load()}")
    if args.contention:
        rows = contended(variants, args.steps, max(1, args.repeats // 2), args.threads)
        print("\n| variant (one core busy) | auto threads | auto ms | slowdown | same threads, idle machine ms | "
              f"interference | {args.threads} threads ms | slowdown |")
        print("|---|---|---|---|---|---|---|---|")
        for v in variants:
            threads, auto, fixed, alone = rows[v.name]
            print(f"| {v.name} | {threads} | {auto * 1e3:.1f} | {auto / times[v.name]:.2f}x | {alone * 1e3:.1f} "
                  f"| {auto / alone:.2f}x | {fixed * 1e3:.1f} | {fixed / times[v.name]:.2f}x |")
        print(f"load {load()}")
    if args.layers:
        architecture, gridsize = args.layers
        for precision in precisions:
            print(f"\nlayers of {architecture} gs{gridsize} {precision}, medians of {args.steps} steps, load {load()}")
            print(breakdown_table(Variant(architecture, gridsize, precision=precision), args.steps))
            print(f"load {load()}")
    if args.profile:
        architecture, gridsize = args.profile
        for precision in precisions:
            print(f"\nprofile of {architecture} gs{gridsize} {precision}, 5 steps, load {load()}")
            print(profile(Variant(architecture, gridsize, precision=precision)))


if __name__ == "__main__":
    main()
