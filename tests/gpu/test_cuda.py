"""On a CUDA GPU, the paths a CPU never takes: the generators' own layers on CUDA tensors, training with
`--accelerator gpu` (deterministic algorithms, fp16 with a loss scaler, bf16), clipping on unscaled
gradients, resume after a kill, prediction on the GPU. Skipped where no GPU is visible: `pytest -m gpu`."""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from ptycho_torch.config import ARCHITECTURES, ModelConfig
from ptycho_torch.generators import build_generator
from ptycho_torch.inference import device_of
from scripts.grid_lines_reconstruct import main as reconstruct
from scripts.studies.grid_lines_torch_runner import main as runner
from tests.helpers import FINISHED, TINY_ARGV, history
from tests.scripts.test_resume import KILLED, RUNNER, assert_same_run, run, settings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU is visible")]
CLIP = 0.05
GPU = ["--accelerator", "gpu", "--devices", "1"]


@pytest.fixture
def exact_float32():
    """TF32 off (torch turns it on for cuDNN convolutions), so that CUDA and CPU differ by float32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_near(cuda: torch.Tensor, cpu: torch.Tensor, what: str) -> None:
    """Equal to float32 rounding, relative to the tensor's scale (a layout or indexing error is O(1))."""
    error = (cuda.detach().cpu() - cpu.detach()).abs().max().item()
    assert error <= 1e-4 * cpu.abs().max().item() + 1e-7, (what, error, cpu.abs().max().item())


@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_generator_on_cuda_equals_its_cpu_self_forward_and_backward(exact_float32, architecture, gridsize):
    torch.manual_seed(0)
    on_cpu = build_generator(ModelConfig(architecture=architecture, gridsize=gridsize))  # the default sizes
    on_cuda = copy.deepcopy(on_cpu).cuda()
    shape = (8, 32, 32) if gridsize == 1 else (8, 4, 32, 32)
    amplitude = torch.rand(shape) + 1.0
    upstream = torch.randn(*shape, 2)
    outputs = {}
    for name, module in (("cpu", on_cpu), ("cuda", on_cuda)):
        device = next(module.parameters()).device
        out = module(amplitude.to(device))
        (torch.view_as_real(out) * upstream.to(device)).sum().backward()
        outputs[name] = out
        with torch.no_grad():  # the prediction path (fused convolutions on a CPU only)
            outputs[name + "-predicted"] = module.eval()(amplitude.to(device))
        module.train()
    assert_near(torch.view_as_real(outputs["cuda"]), torch.view_as_real(outputs["cpu"]), "output")
    assert_near(torch.view_as_real(outputs["cuda-predicted"]), torch.view_as_real(outputs["cpu-predicted"]),
                "prediction")
    for (name, cpu), cuda in zip(on_cpu.named_parameters(), on_cuda.parameters(), strict=True):
        assert_near(cuda.grad, cpu.grad, name)


def train_on_gpu(out: Path, *argv: str) -> list[dict]:
    """A tiny run in this process on the GPU; its history rows (after checking it finished on the GPU)."""
    torch.cuda.reset_peak_memory_stats()
    assert runner([*TINY_ARGV, *GPU, "--grad-clip", str(CLIP), "--output-dir", str(out), *argv]) in FINISHED
    assert torch.cuda.max_memory_allocated() > 0  # it did train there
    return history(out)


def clipped_rows(rows: list[dict]) -> list[dict]:
    assert rows and all(row["grad_norm_postclip"] for row in rows if row["skipped"] == "False")
    return [row for row in rows if row["skipped"] == "False"]


@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_run_trains_on_the_gpu_with_deterministic_algorithms_and_clips_every_step(tmp_path, architecture, gridsize):
    rows = clipped_rows(train_on_gpu(tmp_path / "run", "--architecture", architecture, "--gridsize", str(gridsize)))
    assert all(float(row["grad_norm_postclip"]) <= CLIP * (1 + 1e-5) for row in rows)
    assert any(float(row["grad_norm_preclip"]) > CLIP for row in rows)  # the clip bit
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] in ("ok", "collapsed"), metrics["status"]
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["execution"]["accelerator"] == "gpu" and record["execution"]["deterministic"] is True


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_clips_the_unscaled_gradients(tmp_path, precision):
    """fp16 runs with a loss scaler on a GPU (not on a CPU): the clip must see gradients divided back by
    the scale, so the first step's norm before clipping is the float32 run's, not 2**16 times it."""
    argv = ["--architecture", "fno", "--seed", "4"]
    float32 = clipped_rows(train_on_gpu(tmp_path / "float32", *argv))
    mixed = train_on_gpu(tmp_path / precision, *argv, "--precision", precision)
    # the scaler may skip its first steps (overflow): its first step taken may see another batch, of the same scale
    first = clipped_rows(mixed)[0]
    assert 0.25 < float(first["grad_norm_preclip"]) / float(float32[0]["grad_norm_preclip"]) < 4.0
    assert all(float(row["grad_norm_postclip"]) <= CLIP * (1 + 1e-3) for row in clipped_rows(mixed))


def test_a_gpu_run_killed_and_resumed_ends_as_the_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run(RUNNER, *settings(1, 4, whole), *GPU)
    assert done.returncode in FINISHED, done.stderr[-2000:]
    done = run(KILLED, "2", *settings(1, 4, killed), *GPU)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    resumed = run(RUNNER, "--resume", "--output-dir", str(killed))
    assert resumed.returncode in FINISHED, resumed.stderr[-2000:]
    assert_same_run(whole, killed)


def test_a_cpu_trained_checkpoint_predicts_on_the_gpu_as_on_the_cpu(tmp_path, exact_float32):
    run_dir = tmp_path / "run"
    assert runner([*TINY_ARGV, "--architecture", "hybrid", "--output-dir", str(run_dir)]) in FINISHED
    assert device_of("auto").type == "cuda"
    folders = {}
    for accelerator in ("cpu", "auto", "gpu"):
        folders[accelerator] = tmp_path / accelerator
        assert reconstruct(["--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--test-npz",
                            str(run_dir / "data" / "test.npz"), "--output-dir", str(folders[accelerator]),
                            "--accelerator", accelerator]) in FINISHED
    with np.load(folders["cpu"] / "recon.npz") as cpu:
        for accelerator in ("auto", "gpu"):
            with np.load(folders[accelerator] / "recon.npz") as gpu:
                assert_near(torch.from_numpy(gpu["recon"]), torch.from_numpy(cpu["recon"]), accelerator)


def test_ddp_on_one_gpu_trains_and_clips(tmp_path):
    """In its own process: DDP leaves its process group behind."""
    done = run(RUNNER, *TINY_ARGV, *GPU, "--architecture", "fno", "--strategy", "ddp", "--grad-clip", str(CLIP),
               "--output-dir", str(tmp_path / "run"))
    assert done.returncode in FINISHED, done.stderr[-2000:]
    rows = clipped_rows(history(tmp_path / "run"))
    assert all(float(row["grad_norm_postclip"]) <= CLIP * (1 + 1e-5) for row in rows)
