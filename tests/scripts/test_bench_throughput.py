"""The throughput benchmark: its FLOP count (real arithmetic, whatever dtype the products run in), its
arguments, the layer breakdown, and an earlier checkout timed beside this code."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_throughput import step_flops


@pytest.mark.parametrize("product", [
    lambda a, b: a @ b,
    lambda a, b: torch.bmm(a.unsqueeze(0), b.unsqueeze(0)),
    lambda a, b: torch.addmm(torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype), a, b),
    lambda a, b: torch.baddbmm(torch.zeros(1, a.shape[0], b.shape[1], dtype=a.dtype), a.unsqueeze(0), b.unsqueeze(0)),
    lambda a, b: torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype).addmm_(a, b),  # in place: ops of their own
    lambda a, b: torch.zeros(1, a.shape[0], b.shape[1], dtype=a.dtype).baddbmm_(a.unsqueeze(0), b.unsqueeze(0)),
])
def test_a_complex_product_counts_four_times_the_real_one_of_its_shape(product):
    m, k, n = 3, 5, 7
    counts = {dtype: step_flops(lambda: product(torch.ones(m, k, dtype=dtype), torch.ones(k, n, dtype=dtype)))
              for dtype in (torch.float32, torch.complex64)}
    assert counts[torch.float32] == 2 * m * k * n
    assert counts[torch.complex64] == 8 * m * k * n


def test_ffts_are_counted_at_5_n_log2_n_per_complex_transform_and_half_for_real_ones():
    assert step_flops(lambda: torch.fft.fft(torch.ones(4, 16, dtype=torch.complex64))) == 4 * 5 * 16 * 4
    assert step_flops(lambda: torch.fft.rfft(torch.ones(4, 16))) == int(4 * 2.5 * 16 * math.log2(16))


BAD_ARGUMENTS = [
    ("benchmarks.bench_throughput", ["--variants", "foo:1"], "--variants", "architecture='foo': must be one of"),
    ("benchmarks.bench_throughput", ["--variants", "fno:3"], "--variants", "gridsize"),
    ("benchmarks.bench_throughput", ["--variants", "fno:x"], "--variants", "ARCHITECTURE:GRIDSIZE"),
    ("benchmarks.bench_throughput", ["--variants", ""], "--variants", "architecture='': must be one of"),
    ("benchmarks.bench_throughput", ["--profile", "bar:1"], "--profile", "architecture='bar': must be one of"),
    ("benchmarks.bench_throughput", ["--steps", "0"], "--steps", ">= 1"),
    ("benchmarks.bench_throughput", ["--repeats", "-2"], "--repeats", ">= 1"),
    ("benchmarks.bench_throughput", ["--threads", "0"], "--threads", ">= 1"),
    ("benchmarks.bench_throughput", ["--earlier", "benchmarks"], "--earlier", "holds no ptycho_torch/__init__.py"),
    ("benchmarks.bench_throughput", ["--earlier", ""], "--earlier", "holds no ptycho_torch/__init__.py"),
    ("benchmarks.bench_training", ["--steps", "²"], "--steps", ">= 1"),
    ("benchmarks.bench_training", ["--repeats", "0"], "--repeats", ">= 1"),
    ("benchmarks.bench_simulation", ["--repeats", "1.5"], "--repeats", ">= 1"),
    ("benchmarks.bench_gridsize", ["--epochs", "1"], "--epochs", ">= 2"),
    ("benchmarks.bench_late_contention", ["--busy", "2"], "--busy", ">= 3"),
    ("benchmarks.bench_late_contention", ["--idle", "0"], "--idle", ">= 1"),
    ("benchmarks.bench_late_contention", ["--variants", "cnn:5"], "--variants", "gridsize"),
    ("benchmarks.bench_gridsize", ["--architectures", "cnn,unet"], "--architectures", "'unet' is not one of"),
    ("benchmarks.bench_gpu", ["--device", "tpu"], "--device", "must be cuda or cpu"),
    ("benchmarks.bench_gpu", ["--steps", "0"], "--steps", ">= 1"),
    ("benchmarks.bench_gpu", ["--variants", "hybrid:3"], "--variants", "gridsize"),
]


@pytest.mark.parametrize("module, argv, flag, rule", BAD_ARGUMENTS, ids=[" ".join(a[1]) for a in BAD_ARGUMENTS])
def test_a_bad_benchmark_argument_exits_2_naming_the_flag_and_the_rule(module, argv, flag, rule, capsys):
    import importlib

    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).build_parser().parse_args(argv)
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert f"argument {flag}" in message and rule in message


def test_good_benchmark_arguments_parse_to_their_values():
    from benchmarks.bench_throughput import build_parser

    args = build_parser().parse_args(["--variants", "fno:2,cnn,fno:2", "--profile", "hybrid:2", "--steps", "3"])
    assert args.variants == [("fno", 2), ("cnn", 1)] and args.profile == ("hybrid", 2) and args.steps == 3


def test_the_layer_breakdown_times_every_layer_and_the_steps_phases_then_removes_its_hooks():
    from benchmarks.bench_throughput import Variant, layer_breakdown, timed_layers

    variant = Variant("hybrid", 1)
    rows, phases = layer_breakdown(variant, steps=2)
    names = [name for name, _, _ in rows]
    assert names == [f"body.{name}" for name, _ in timed_layers(variant.module.generator.body)] + ["head"]
    assert any(".stages." in name for name in names)  # the decoder is opened, its layers timed one by one
    assert all(forward > 0 for _, forward, _ in rows)
    assert rows[0][2] is None  # body.0 reads the data: no backward of its own
    assert all(backward > 0 for _, _, backward in rows[1:])
    assert set(phases) == {"forward and loss", "backward", "optimizer"} and all(ms > 0 for ms in phases.values())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in variant.module.modules())
    assert names[0] == "body.0+1 (composed)" and "lifted" not in vars(variant.module.generator.body)  # uninstalled


EARLIER_SCRIPT = """
import sys, tempfile
from pathlib import Path
import ptycho_torch.model
from benchmarks.bench_throughput import Variant
from benchmarks.earlier_code import EARLIER, load_earlier
with tempfile.TemporaryDirectory() as scratch:
    package = load_earlier(Path(sys.argv[1]), Path(scratch))
    copied = [p.read_text() for p in (Path(scratch) / EARLIER).rglob("*.py")]
    assert copied and not any("ptycho_torch." in text or "from ptycho_torch " in text for text in copied)
    variant = Variant("cnn", 1, package=EARLIER)
    variant.step()
    names = {type(m).__module__ for m in variant.module.modules()} - {"torch.nn.modules.container"}
    loaded = sorted(name for name in sys.modules if name.startswith("ptycho_torch"))
    try:
        load_earlier(Path(sys.argv[1]), Path(scratch))
        twice = "loaded twice"
    except RuntimeError as err:
        twice = str(err)
print(package.__name__, variant.name, sorted(names), loaded, twice, sep="\\n")
"""


def test_an_earlier_checkout_runs_beside_this_code_under_its_own_names(tmp_path):
    """This checkout stands in for an earlier one: its copy is imported as another package, whose
    modules (the model's layers included) are its own, never this code's; a second load is refused."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", EARLIER_SCRIPT, str(root)], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    package, name, layer_modules, loaded, twice = done.stdout.strip().splitlines()
    assert package == "ptycho_torch_earlier" and name == "cnn gs1 earlier"
    assert "ptycho_torch_earlier.generators" in layer_modules and "'ptycho_torch." not in layer_modules
    assert "'ptycho_torch_earlier.model'" in loaded and "'ptycho_torch.model'" in loaded  # both, side by side
    assert twice == "an earlier checkout is already loaded as ptycho_torch_earlier"


def test_the_speedup_is_the_median_of_each_rounds_ratio():
    from types import SimpleNamespace

    from benchmarks.bench_throughput import speedup_table

    variants = [SimpleNamespace(name=n) for n in ("fno gs1 earlier", "fno gs1", "cnn gs1 earlier", "cnn gs1")]
    rounds = {"fno gs1 earlier": [0.2, 0.3, 0.1], "fno gs1": [0.1, 0.1, 0.1],
              "cnn gs1 earlier": [0.04, 0.02, 0.03], "cnn gs1": [0.02, 0.04, 0.01]}
    rows = speedup_table(variants, rounds).splitlines()[2:]
    assert rows == ["| fno gs1 | 200.0 | 100.0 | 2.00x | 1.00-3.00x |",
                    "| cnn gs1 | 30.0 | 20.0 | 2.00x | 0.50-3.00x |"]


def test_rounds_run_the_variants_in_alternating_order():
    """No variant always runs right after the same one (an earlier code's step, say, always warming
    the caches for this code's)."""
    from types import SimpleNamespace

    from benchmarks.bench_throughput import timed_rounds

    ran = []
    variants = [SimpleNamespace(name=name, median_step=lambda steps, name=name: ran.append(name) or 0.01)
                for name in ("a", "b", "c")]
    rounds = timed_rounds(variants, steps=1, repeats=3)
    assert ran == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert rounds == {"a": [0.01] * 3, "b": [0.01] * 3, "c": [0.01] * 3}


def test_the_benchmark_names_its_host_before_any_figure(capsys):
    from benchmarks.bench_throughput import main
    from benchmarks.host import host_line
    from ptycho_torch.cpu_settings import denormals_flushed

    threads, flushed = torch.get_num_threads(), denormals_flushed()
    try:  # the benchmark sets both for its process, as a run does
        main(["--variants", "cnn:1", "--steps", "1", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flushed)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == host_line()
    assert any(line.startswith("| cnn gs1 |") for line in lines)  # the figures follow


def test_the_rate_table_gives_each_steps_median_its_rounds_range_and_its_share_of_the_matmul():
    from types import SimpleNamespace

    from benchmarks.bench_throughput import rate_table

    variants = [SimpleNamespace(name="fno gs1", precision="32-true"),
                SimpleNamespace(name="fno gs1 bf16-mixed", precision="bf16-mixed")]
    flops = {"fno gs1": 6e9, "fno gs1 bf16-mixed": 6e9}
    rounds = {"fno gs1": [0.06, 0.05, 0.08], "fno gs1 bf16-mixed": [0.04, 0.03]}
    rows = rate_table(variants, flops, rounds, {"32-true": 200.0, "bf16-mixed": 400.0}).splitlines()[2:]
    assert rows == ["| fno gs1 | 6.00 | 60.0 | 50.0-80.0 | 100.0 | 50% |",  # 6 GFLOP in 60 ms
                    "| fno gs1 bf16-mixed | 6.00 | 35.0 | 30.0-40.0 | 171.4 | 43% |"]  # against the bf16 rate
