"""The GPU step benchmark: its steps run (on the CPU here) and print a row per variant; without a GPU,
--device cuda is refused naming the flag."""

from __future__ import annotations

import re

import pytest
import torch

from benchmarks import bench_gpu


def test_each_variant_prints_its_float32_and_bf16_step_times(capsys):
    bench_gpu.main(["--device", "cpu", "--variants", "cnn:1,fno:2", "--steps", "1", "--matmul-size", "64"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\w+ gs\d) \| ([\d.]+) \| ([\d.]+) \|$", out, flags=re.MULTILINE)
    assert [row[0] for row in rows] == ["cnn gs1", "fno gs2"]
    assert all(float(ms) > 0 for row in rows for ms in row[1:])
    assert out.startswith("host: ") and "device: the CPU; load " in out


def test_the_timed_step_trains_the_model():
    variant = bench_gpu.on_device("hybrid", 1, "32-true", torch.device("cpu"))
    before = [p.detach().clone() for p in variant.module.parameters()]
    assert bench_gpu.median_step_ms(variant, torch.device("cpu"), steps=1) > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, variant.module.parameters()))  # Adam stepped


def test_cuda_without_a_gpu_is_refused_naming_the_flag(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit) as stopped:
        bench_gpu.main(["--variants", "cnn:1"])
    assert stopped.value.code == 2
    assert "--device cuda: no CUDA GPU is visible" in capsys.readouterr().err
