"""A run started from another run's config.json reproduces it bit for bit (separate processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FINISHED, TINY_ARGV

ROOT = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, "-m", "scripts.studies.grid_lines_torch_runner"]
# Threads fixed: the automatic count samples the machine, and a different count sums in another order.
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def run(argv: list[str]) -> None:
    done = subprocess.run([*RUNNER, *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode in FINISHED, done.stderr[-2000:]


@pytest.mark.parametrize("gridsize", [1, 2])
def test_a_rerun_from_config_json_reproduces_history_metrics_and_reconstruction(tmp_path, gridsize):
    first, second = tmp_path / "first", tmp_path / "second"
    run([*TINY_ARGV, "--gridsize", str(gridsize), "--seed", "3", "--output-dir", str(first)])
    run(["--config", str(first / "config.json"), "--output-dir", str(second)])
    for name in ("history.csv", "metrics.json", "recon.npz"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
