"""Fixtures shared by the model and runner tests (tiny simulated data, written once per worker)."""

from __future__ import annotations

import pytest

from ptycho_torch.config import SimulationConfig
from ptycho_torch.npz_data import load_npz
from ptycho_torch.simulation import simulate_dataset

TINY_SIMULATION = SimulationConfig(N=16, object_size=32, n_lines=20, n_train_images=1, n_test_images=1,
                                   train_stride=4, test_stride=8, set_phi=True, data_seed=3)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    """Paths of a tiny (N=16, 25 train patterns) simulated train/test pair."""
    return simulate_dataset(TINY_SIMULATION, tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_data(tiny_npz):
    train_path, test_path = tiny_npz
    return load_npz(train_path, "train"), load_npz(test_path, "test")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test models are tiny: intra-op threads only add OpenMP barriers, and under xdist (a process
    per core) or on a shared machine preempted threads made tiny steps up to 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
