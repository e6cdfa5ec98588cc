"""Fixtures (tiny simulated data, one torch thread) and the contract suite's collection rule.

Torch-free at collection time: fixtures import torch and the simulation inside. The contract
tests live in ``tests/contract/`` and are marked ``contract`` there; ``pytest -m contract``
collects that folder alone, so it never imports torch or the training code.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY_SIMULATION

CONTRACT_DIR = Path(__file__).parent / "contract"


def _contract_only(config: pytest.Config) -> bool:
    return (config.getoption("markexpr") or "").strip() == "contract"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m contract`` skip every test module outside tests/contract/ (and so its imports)."""
    if _contract_only(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return True if CONTRACT_DIR not in collection_path.parents else None
    return None


@pytest.fixture(autouse=True)
def _library_logs_to_this_tests_stderr():
    """Lightning's and torch's loggers keep the stderr they found when first imported, which may be an
    earlier test's capture, closed since ("I/O operation on closed file"): point them at this test's."""
    if "torch" in sys.modules:
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and name.split(".")[0] in ("lightning", "torch", "torchmetrics"):
                for handler in logger.handlers:
                    if type(handler) is logging.StreamHandler:
                        handler.stream = sys.stderr  # not setStream: it flushes the old, maybe closed, stream
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in tests/contract/ is a contract test, and no contract test lives elsewhere."""
    for item in items:
        inside = CONTRACT_DIR in item.path.parents
        if inside:
            item.add_marker(pytest.mark.contract)
        elif item.get_closest_marker("contract"):
            raise pytest.UsageError(f"{item.nodeid} is marked contract but lives outside tests/contract/, "
                                    "which `pytest -m contract` alone collects")


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    """Paths of a tiny (N=16, 25 train patterns) simulated train/test pair."""
    from ptycho_torch.simulation import simulate_dataset

    return simulate_dataset(TINY_SIMULATION, tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_data(tiny_npz):
    from ptycho_torch.npz_data import load_npz

    train_path, test_path = tiny_npz
    return load_npz(train_path, "train"), load_npz(test_path, "test")


# The automatic thread count (ptycho_torch.cpu_settings) honours this cap: every run a test starts,
# in this process or a child, uses one thread, for the reason below.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test models are tiny: intra-op threads only add OpenMP barriers, and under xdist (a process
    per core) or on a shared machine preempted threads made tiny steps up to 100x slower.
    The contract suite never imports torch, so it is left alone there."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
