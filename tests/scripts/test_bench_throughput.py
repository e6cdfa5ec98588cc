"""The throughput benchmark's FLOP count: real arithmetic, whatever dtype the products run in."""

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
    ("benchmarks.bench_training", ["--steps", "²"], "--steps", ">= 1"),
    ("benchmarks.bench_training", ["--repeats", "0"], "--repeats", ">= 1"),
    ("benchmarks.bench_simulation", ["--repeats", "1.5"], "--repeats", ">= 1"),
    ("benchmarks.bench_gridsize", ["--epochs", "1"], "--epochs", ">= 2"),
    ("benchmarks.bench_gridsize", ["--architectures", "cnn,unet"], "--architectures", "'unet' is not one of"),
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
